//! The fit check of `locara app install`: each model's estimate from the
//! store and its GGUF file, held to the machine's limits by core's pure
//! half (`locara_core::fit`).

use crate::store::{validate_parts, ModelName, Store, StoreError};
use locara_core::estimate::{self, Backend, EstimateError, EstimateOptions};
use locara_core::fit::{check_requirement, judge_fit, Fit, LimitError, MachineLimits, ModelCost};
use locara_core::manifest::{AppId, Manifest, ModelDecl, Role};
use locara_core::LoadDefaults;
use std::path::{Path, PathBuf};

/// Why an app cannot be installed on this machine.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Beyond the machine's memory or budget.
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{}", not_in_store(app, models))]
    NotInStore { app: AppId, models: Vec<ModelName> },
    #[error("{app} uses {model}, whose file {} is not a valid GGUF model: {source}", path.display())]
    InvalidModel {
        app: AppId,
        model: ModelName,
        path: PathBuf,
        source: Box<locara_gguf::GgufError>,
    },
    #[error("{app} pairs {draft} as the draft of {target}, but it cannot draft for it: {source}")]
    DraftVocabulary {
        app: AppId,
        target: String,
        draft: String,
        source: Box<locara_gguf::vocab::VocabMismatch>,
    },
    #[error("cannot estimate the memory of {model}, which {app} uses: {source}")]
    Estimate {
        app: AppId,
        model: ModelName,
        source: EstimateError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FitError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            FitError::Limit(e) => e.kind(),
            FitError::NotInStore { .. } => "model_not_in_store",
            FitError::InvalidModel { .. } => "invalid_model",
            FitError::DraftVocabulary { .. } => "draft_vocabulary",
            FitError::Estimate { .. } => "estimate_failed",
            FitError::Store(e) => e.kind(),
        }
    }
}

fn not_in_store(app: &AppId, models: &[ModelName]) -> String {
    let pulls: Vec<String> = models
        .iter()
        .map(|m| format!("`locara pull {m}`"))
        .collect();
    let names: Vec<&str> = models.iter().map(ModelName::as_str).collect();
    let (which, them) = if models.len() == 1 {
        ("which is", "it")
    } else {
        ("which are", "them")
    };
    format!(
        "{app} uses {}, {which} not in the store; pull {them} first: {} \
         (or `locara import FILE --name NAME` for a local file)",
        names.join(", "),
        pulls.join(", ")
    )
}

/// Whether this machine can hold `manifest`'s app: its `requires.memory_gb`
/// within the machine's memory, and every model it declares (both of a
/// speculative pair), at the context and K/V type it loads with for the
/// app (declared, else the runtime's `defaults`: [`ModelDecl::load_terms`],
/// as run-time admission takes them) with the app's concurrency, within the
/// budget at once. Every model must be in `store`.
///
/// [`ModelDecl::load_terms`]: locara_core::manifest::ModelDecl::load_terms
pub fn check_fit(
    manifest: &Manifest,
    store: &Store,
    machine: &MachineLimits,
    defaults: &LoadDefaults,
) -> Result<Fit, FitError> {
    check_requirement(manifest, machine)?;
    let costs = model_costs(
        manifest,
        store,
        &locara_platform::estimate_backend(),
        defaults,
    )?;
    Ok(judge_fit(manifest, costs, machine)?)
}

/// The estimate of each model of `manifest`, in manifest order. Names every
/// model missing from the store at once.
pub fn model_costs(
    manifest: &Manifest,
    store: &Store,
    backend: &Backend,
    defaults: &LoadDefaults,
) -> Result<Vec<ModelCost>, FitError> {
    let mut missing = Vec::new();
    let mut entries = Vec::new();
    for decl in &manifest.models {
        // Validated as a store name when the manifest was read.
        let name: ModelName = decl.reference.parse()?;
        match store.get(&name)? {
            Some(entry) => entries.push((decl, name, entry)),
            None => missing.push(name),
        }
    }
    if !missing.is_empty() {
        return Err(FitError::NotInStore {
            app: manifest.id.clone(),
            models: missing,
        });
    }
    let mut files = Vec::with_capacity(entries.len());
    for (decl, name, entry) in entries {
        // Every part of a split model: its weights are all of theirs.
        let paths: Vec<PathBuf> = entry.files().into_iter().map(Path::to_path_buf).collect();
        let file = validate_parts(&paths).map_err(|e| match e {
            StoreError::InvalidModel { path, source } => FitError::InvalidModel {
                app: manifest.id.clone(),
                model: name.clone(),
                path,
                source: Box::new(source),
            },
            other => FitError::Store(other),
        })?;
        files.push((decl, name, file));
    }
    // A speculative pair: the draft's tokens go to the target as they are.
    let options_of = |decl: &ModelDecl| {
        let terms = decl.load_terms(defaults);
        EstimateOptions {
            context: terms.context,
            kv_type: terms.kv_type,
            parallel: manifest.max_concurrency,
            backend: backend.clone(),
            full_window_cache: estimate::ENGINE_FULL_WINDOW_CACHE,
            pool: None,
        }
    };
    let mut draft_options = None;
    if let Some(pair) = &manifest.speculative {
        let find = |reference: &str, role| {
            files
                .iter()
                .find(|(d, _, _)| d.reference == reference && d.role == role)
        };
        if let (Some((target, _, t)), Some((_, _, d))) = (
            find(&pair.target, Role::Chat),
            find(&pair.draft, Role::Draft),
        ) {
            locara_gguf::vocab::check_draft_vocabulary(t, d).map_err(|source| {
                FitError::DraftVocabulary {
                    app: manifest.id.clone(),
                    target: pair.target.clone(),
                    draft: pair.draft.clone(),
                    source: Box::new(source),
                }
            })?;
            // The draft loads in the target's worker, with one sequence of
            // the target's context (`locara_core::estimate::draft_options`).
            let target_context = estimate::estimate(&t.shape(), &options_of(target))
                .map(|e| e.context)
                .unwrap_or(target.load_terms(defaults).context);
            draft_options = Some(estimate::draft_options(&EstimateOptions {
                context: target_context,
                ..options_of(target)
            }));
        }
    }
    let mut costs = Vec::with_capacity(files.len());
    for (decl, name, file) in files {
        let is_draft = manifest
            .speculative
            .as_ref()
            .is_some_and(|p| p.draft == decl.reference && decl.role == Role::Draft);
        let options = match (&draft_options, is_draft) {
            (Some(o), true) => o.clone(),
            _ => options_of(decl),
        };
        let est =
            estimate::estimate(&file.shape(), &options).map_err(|source| FitError::Estimate {
                app: manifest.id.clone(),
                model: name,
                source,
            })?;
        costs.push(ModelCost {
            reference: decl.reference.clone(),
            role: decl.role,
            context: est.context,
            kv_type: options.kv_type,
            parallel: est.parallel,
            estimate: est.total(),
        });
    }
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifest;

    const MAIL: &str = "id = \"com.example.mail\"\nname = \"Mail\"\nversion = \"2.1.0\"\n\
                        [[models]]\nref = \"gemma3:270m\"\n[[models]]\nref = \"smollm2:135m\"\n\
                        role = \"embedding\"\n";

    #[test]
    fn models_missing_from_the_store_are_named_together_with_the_way_to_get_them() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let manifest = parse_manifest(MAIL, "a").unwrap();
        let err = model_costs(
            &manifest,
            &store,
            &Backend::Cpu { repack: vec![] },
            &LoadDefaults::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), "model_not_in_store");
        assert_eq!(
            err.to_string(),
            "com.example.mail uses gemma3:270m, smollm2:135m, which are not in the store; pull \
             them first: `locara pull gemma3:270m`, `locara pull smollm2:135m` (or `locara \
             import FILE --name NAME` for a local file)"
        );
    }
}
