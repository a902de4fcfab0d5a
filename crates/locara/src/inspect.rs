//! `locara inspect`: what a model file says about itself, after validation.

use crate::config::Config;
use anyhow::{Context, Result};
use locara_core::Bytes;
use locara_daemon::store::ModelName;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn inspect(model: &str, json: bool) -> Result<ExitCode> {
    let (path, file) = validated(model)?;
    let m = &file.model;
    let summary = file.tensor_summary();
    if json {
        let out = serde_json::json!({
            "path": path,
            "gguf_version": file.version,
            "file_size": file.file_size,
            "alignment": file.alignment,
            "metadata": m,
            "tensors": summary,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("file            {}", path.display());
    println!("GGUF version    {}", file.version);
    println!("architecture    {}", m.architecture);
    if let Some(name) = &m.name {
        println!("name            {name}");
    }
    println!("parameters      {}", m.parameter_count);
    println!("quantization    {}", m.quantization);
    println!("layers          {}", m.block_count);
    println!("embedding       {}", m.embedding_length);
    println!("heads           {}", m.head_count);
    let kv = &m.head_count_kv;
    let kv_text = match (kv.iter().min(), kv.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
        (Some(lo), Some(hi)) => format!("{lo}..{hi} (per layer)"),
        _ => "-".to_string(),
    };
    println!("KV heads        {kv_text}");
    println!("head dim K/V    {}/{}", m.key_length, m.value_length);
    println!("trained context {}", m.context_length);
    match (m.sliding_window, m.sliding_window_pattern) {
        (Some(w), Some(p)) => println!("sliding window  {w} tokens (every {p}th layer global)"),
        (Some(w), None) => println!("sliding window  {w} tokens"),
        _ => {}
    }
    println!("vocabulary      {}", m.vocab_size);
    println!(
        "chat template   {}",
        if m.has_chat_template { "yes" } else { "no" }
    );
    println!(
        "mapped weights  {} in {} tensors",
        Bytes(summary.total_bytes),
        summary.count
    );
    for t in &summary.by_type {
        println!(
            "  {:<8} {:>5} tensors {:>12}",
            t.ggml_type,
            t.count,
            Bytes(t.bytes).to_string()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A stored model's name, or a path to a file, through the GGUF guard: a
/// stored model as a load checks it (every part of a split one; an adopted
/// file still the one hashed), a file by itself. With the (first) file's
/// path.
pub fn validated(model: &str) -> Result<(PathBuf, locara_gguf::GgufFile)> {
    let path = locate(model)?;
    let file = match stored(model, &path)? {
        Some((store, entry)) => store.check_for_load(&entry)?,
        None => locara_gguf::validate_file(&path)
            .with_context(|| format!("{} is not a valid GGUF model", path.display()))?,
    };
    Ok((path, file))
}

/// The store entry `model` names, when it is a stored name rather than a
/// file (`path` is what [`locate`] made of it).
fn stored(
    model: &str,
    path: &Path,
) -> Result<
    Option<(
        locara_daemon::store::Store,
        locara_daemon::store::ModelEntry,
    )>,
> {
    if Path::new(model) == path {
        return Ok(None);
    }
    let Ok(name) = model.parse::<locara_daemon::store::ModelName>() else {
        return Ok(None);
    };
    let store = Config::load(false)?.store()?;
    Ok(store.get(&name)?.map(|entry| (store, entry)))
}

/// A stored model's name, or a path to a file.
pub fn locate(model: &str) -> Result<PathBuf> {
    let as_path = PathBuf::from(model);
    if as_path.exists() {
        return Ok(as_path);
    }
    let name: ModelName = model
        .parse()
        .with_context(|| format!("{model} is neither a file nor a model name"))?;
    let config = Config::load(false)?;
    let entry = config
        .store()?
        .get(&name)?
        .ok_or(locara_daemon::store::StoreError::NotFound(name))?;
    Ok(entry.path)
}
