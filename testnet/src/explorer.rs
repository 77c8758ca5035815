//! The node's explorer page, rendered without a browser: its own script runs under Node.js
//! (`explorer.mjs`) against a live node, so a test sees what an operator would.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail};

const SHIM: &str = include_str!("explorer.mjs");

/// What the explorer page of `node` (its HTTP URL) shows: each element's HTML by id.
/// Needs `node` (Node.js 18 or later, for `fetch`); `scripts/setup` installs it.
pub fn render(node: &str, scratch: &std::path::Path) -> Result<BTreeMap<String, String>> {
    let shim = scratch.join("explorer.mjs");
    std::fs::write(&shim, SHIM).with_context(|| format!("writing {}", shim.display()))?;
    let out = Command::new("node")
        .arg(&shim)
        .arg(node)
        .output()
        .context("running node (Node.js): scripts/setup installs it")?;
    if !out.status.success() {
        bail!(
            "the explorer script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("the explorer shim printed no JSON")
}

/// The rows of a rendered table body: each row's cells' text, tags removed.
pub fn rows(html: &str) -> Vec<Vec<String>> {
    html.split("<tr>")
        .filter(|r| !r.is_empty())
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let mut text = String::new();
                    let mut in_tag = true; // the rest of the opening `<td ...>`
                    for c in cell.chars() {
                        match c {
                            '<' => in_tag = true,
                            '>' => in_tag = false,
                            c if !in_tag => text.push(c),
                            _ => {}
                        }
                    }
                    text
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cells_without_tags() {
        let html = r#"<tr><td>v-0</td><td><code>0xabc…</code></td><td class="r">1</td></tr><tr><td>x</td></tr>"#;
        assert_eq!(
            rows(html),
            vec![
                vec!["v-0".to_string(), "0xabc…".into(), "1".into()],
                vec!["x".to_string()]
            ]
        );
        assert!(rows("").is_empty());
    }
}
