//! Whether a machine can hold an app: the pure half of the fit check that
//! `locara app install` runs, so that a machine too small is told so at
//! install, not at run time.
//!
//! The daemon estimates each model the manifest declares (it reads the
//! store and the GGUF files) and hands the [`ModelCost`]s here with the
//! [`MachineLimits`]. [`check_requirement`] holds `requires.memory_gb` to the
//! machine's memory; [`judge_fit`] holds the models together to the budget.
//!
//! ```
//! use locara_core::fit::{judge_fit, MachineLimits, ModelCost};
//! use locara_core::manifest::{Field, ManifestDraft, ModelDraft, Role};
//! use locara_core::KvType;
//!
//! let manifest = ManifestDraft {
//!     id: Field::Given("com.example.notes".into()),
//!     name: Field::Given("Notes".into()),
//!     version: Field::Given("1.0.0".into()),
//!     models: Field::Given(vec![ModelDraft {
//!         reference: Field::Given("smollm2:135m".into()),
//!         ..ModelDraft::default()
//!     }]),
//!     ..ManifestDraft::default()
//! }
//! .validate()
//! .unwrap();
//! let machine = MachineLimits {
//!     budget: 4 << 30,
//!     budget_basis: "given".into(),
//!     physical_memory: 8 << 30,
//! };
//! let cost = ModelCost {
//!     reference: "smollm2:135m".into(),
//!     role: Role::Chat,
//!     context: 8192,
//!     kv_type: KvType::Q8_0,
//!     parallel: 1,
//!     estimate: 1 << 30,
//! };
//! let fit = judge_fit(&manifest, vec![cost], &machine).unwrap();
//! assert_eq!(fit.budget - fit.needs, 3 << 30);
//! ```

use crate::bytes::Bytes;
use crate::load::KvType;
use crate::manifest::{AppId, Manifest, Role};
use serde::Serialize;

/// What this machine gives apps: the limits an app is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineLimits {
    /// The runtime's memory budget, bytes.
    pub budget: u64,
    /// Where the budget comes from, for messages ("70 % of memory (6.2 GiB
    /// usable)").
    pub budget_basis: String,
    /// Physical memory, bytes: what `requires.memory_gb` is held to.
    pub physical_memory: u64,
}

/// One model of an app at its declared context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelCost {
    pub reference: String,
    pub role: Role,
    /// Context per sequence in tokens: the declared one (8192 when unsaid),
    /// clamped to the model's trained context as a load clamps it.
    pub context: u32,
    pub kv_type: KvType,
    /// Sequences: the app's `max_concurrency`, each with its own K/V cache.
    pub parallel: u32,
    /// The estimate: mapped weights plus footprint, bytes.
    pub estimate: u64,
}

/// An app that fits, and by how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fit {
    /// Each model's estimate, in manifest order.
    pub models: Vec<ModelCost>,
    /// The sum of the estimates, bytes.
    pub needs: u64,
    /// The machine's budget, bytes.
    pub budget: u64,
}

/// Why an app is beyond this machine's limits.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "{app} requires {required_gb} GiB of memory (`requires.memory_gb`); this machine has {}",
        Bytes(*physical)
    )]
    MemoryRequirement {
        app: AppId,
        /// `requires.memory_gb`, GiB.
        required_gb: f64,
        /// The machine's physical memory, bytes.
        physical: u64,
    },
    #[error(
        "{app} needs {} for its models at their declared contexts; this machine's budget is {} \
         ({basis}); lower the contexts in the manifest or use smaller models",
        Bytes(*needs),
        Bytes(*budget)
    )]
    OverBudget {
        app: AppId,
        /// Each model's estimate, in manifest order.
        models: Vec<ModelCost>,
        /// The sum of the estimates, bytes.
        needs: u64,
        /// The machine's budget, bytes.
        budget: u64,
        /// Where the budget comes from.
        basis: String,
    },
}

impl LimitError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            LimitError::MemoryRequirement { .. } => "memory_requirement_not_met",
            LimitError::OverBudget { .. } => "app_over_budget",
        }
    }
}

/// `requires.memory_gb` against the machine's memory. Linux reports a little
/// less than the RAM installed (the kernel keeps some), so the memory is
/// taken up to the next whole GiB: an app asking for 16 fits a machine sold
/// as 16 GB.
pub fn check_requirement(manifest: &Manifest, machine: &MachineLimits) -> Result<(), LimitError> {
    const GIB: u64 = 1 << 30;
    let Some(required) = manifest.requires.memory_bytes() else {
        return Ok(());
    };
    if required.0 > machine.physical_memory.div_ceil(GIB) * GIB {
        return Err(LimitError::MemoryRequirement {
            app: manifest.id.clone(),
            required_gb: manifest.requires.memory_gb.unwrap_or_default(),
            physical: machine.physical_memory,
        });
    }
    Ok(())
}

/// Whether the models' estimates (`costs`, one per model of `manifest`, in
/// manifest order) fit the budget together. An app's models are counted as
/// all loaded at once, both of a speculative pair: that is what the app may
/// ask for.
pub fn judge_fit(
    manifest: &Manifest,
    costs: Vec<ModelCost>,
    machine: &MachineLimits,
) -> Result<Fit, LimitError> {
    let needs = costs
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(c.estimate));
    if needs > machine.budget {
        return Err(LimitError::OverBudget {
            app: manifest.id.clone(),
            models: costs,
            needs,
            budget: machine.budget,
            basis: machine.budget_basis.clone(),
        });
    }
    Ok(Fit {
        models: costs,
        needs,
        budget: machine.budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Field, ManifestDraft, ModelDraft, RequiresDraft, SpeculativeDraft};

    fn model(reference: &str, role: &str) -> ModelDraft {
        ModelDraft {
            reference: Field::Given(reference.into()),
            role: Field::Given(role.into()),
            ..ModelDraft::default()
        }
    }

    /// `com.example.notes` with `models`, and `requires.memory_gb` when given.
    fn notes(models: Vec<ModelDraft>, memory_gb: Option<f64>) -> ManifestDraft {
        ManifestDraft {
            id: Field::Given("com.example.notes".into()),
            name: Field::Given("Notes".into()),
            version: Field::Given("1.0.0".into()),
            models: Field::Given(models),
            requires: match memory_gb {
                Some(gb) => Field::Given(RequiresDraft {
                    memory_gb: Field::Given(gb),
                }),
                None => Field::Absent,
            },
            ..ManifestDraft::default()
        }
    }

    fn cost(reference: &str, role: Role, estimate: u64) -> ModelCost {
        ModelCost {
            reference: reference.into(),
            role,
            context: 8192,
            kv_type: KvType::Q8_0,
            parallel: 1,
            estimate,
        }
    }

    #[test]
    fn every_model_counts_against_the_budget_a_speculative_pair_both() {
        let manifest = ManifestDraft {
            speculative: Field::Given(SpeculativeDraft {
                target: Field::Given("big:7b".into()),
                draft: Field::Given("small:1b".into()),
            }),
            ..notes(
                vec![model("big:7b", "chat"), model("small:1b", "draft")],
                None,
            )
        }
        .validate()
        .unwrap();
        let machine = MachineLimits {
            budget: 4 << 30,
            budget_basis: "70 % of memory (6.2 GiB usable)".into(),
            physical_memory: 6 << 30,
        };
        let costs = vec![
            cost("big:7b", Role::Chat, 3 << 30),
            cost("small:1b", Role::Draft, 1 << 30),
        ];
        let fit = judge_fit(&manifest, costs.clone(), &machine).unwrap();
        assert_eq!((fit.needs, fit.budget), (4 << 30, 4 << 30));

        let mut over = costs;
        over[1].estimate += 1 << 29;
        let err = judge_fit(&manifest, over, &machine).unwrap_err();
        assert_eq!(err.kind(), "app_over_budget");
        assert_eq!(
            err.to_string(),
            "com.example.notes needs 4.5 GiB for its models at their declared contexts; this \
             machine's budget is 4.0 GiB (70 % of memory (6.2 GiB usable)); lower the contexts \
             in the manifest or use smaller models"
        );
    }

    #[test]
    fn the_memory_requirement_is_held_to_whole_gib_of_memory() {
        let with = |gb: f64| {
            notes(vec![model("smollm2:135m", "chat")], Some(gb))
                .validate()
                .unwrap()
        };
        // A 16 GB machine whose kernel keeps some of it.
        let machine = MachineLimits {
            budget: 10 << 30,
            budget_basis: "given".into(),
            physical_memory: (15 << 30) + (1 << 29),
        };
        assert!(check_requirement(&with(16.0), &machine).is_ok());
        assert!(check_requirement(&with(8.5), &machine).is_ok());
        let err = check_requirement(&with(16.5), &machine).unwrap_err();
        assert_eq!(err.kind(), "memory_requirement_not_met");
        assert_eq!(
            err.to_string(),
            "com.example.notes requires 16.5 GiB of memory (`requires.memory_gb`); this machine \
             has 15.5 GiB"
        );
        let unsaid = notes(vec![model("smollm2:135m", "chat")], None)
            .validate()
            .unwrap();
        assert!(check_requirement(&unsaid, &machine).is_ok());
    }
}
