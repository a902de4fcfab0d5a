//! `locara open`: the daemon's web page, logged in. It asks the daemon
//! (admin token) for a one-time login code and prints the link; visiting
//! it sets the page's session cookie, so the token itself never enters the
//! browser. The link works once, for two minutes.

use crate::serve::{agent, api_error, require_daemon};
use anyhow::{Context, Result};
use std::process::{ExitCode, Stdio};

pub fn open(no_browser: bool) -> Result<ExitCode> {
    let (url, auth) = require_daemon()?;
    let answer: serde_json::Value = agent()
        .post(&format!("{url}/locara/v1/login"))
        .set("Authorization", &auth)
        .call()
        .map_err(api_error)?
        .into_json()
        .context("reading the daemon's answer")?;
    let path = answer["path"]
        .as_str()
        .context("the daemon's answer has no login path")?;
    let link = format!("{url}{path}");
    println!("{link}");
    eprintln!(
        "This link logs a browser in to the daemon's page; it works once, within {} s.",
        answer["expires_in_s"].as_u64().unwrap_or(0)
    );
    if !no_browser {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        // A machine without a browser (over SSH) still has the printed link.
        let opened = std::process::Command::new(opener)
            .arg(&link)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !opened {
            eprintln!("(no browser opened: open the link yourself)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
