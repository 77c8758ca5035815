//! `proofmesh key create`: an API key for the OpenAI-compatible API (see `chain::apikey`).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::submit::{agent, api_error, domain_of, get};

#[derive(clap::Subcommand)]
pub enum KeyCommand {
    /// Make an API key: a grant signed by your account letting the key's holder spend up to
    /// CAP of your OPG on jobs until it expires. Prints it as JSON; pass `api_key` as the
    /// bearer token (`OPENAI_API_KEY`).
    Create(CreateArgs),
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Any node of the network (the key is bound to its genesis).
    #[arg(long)]
    node: String,
    /// The paying account's private key file (hex).
    #[arg(long)]
    key: PathBuf,
    /// Most the key may spend in all: base units, or OPG with a suffix (`10opg`).
    #[arg(long, value_parser = crate::chaincmd::parse_amount)]
    cap: u128,
    /// How long the key lasts: seconds, or a number with s, m, h or d (`30d`).
    #[arg(long, value_parser = parse_duration)]
    expires: u64,
    /// Models the key may buy, by name or id (repeatable; default: any model).
    #[arg(long = "model")]
    models: Vec<String>,
}

/// Seconds of `30d`, `12h`, `15m`, `90s` or `90`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 3600, 90m, 12h, 30d)"))?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{s:?}: a key must last from 1 s to centuries")),
        Some(secs) => Ok(secs),
    }
}

pub fn key(cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Create(a) => create(a),
    }
}

fn create(a: CreateArgs) -> Result<()> {
    let agent = agent();
    let node = a.node.trim_end_matches('/');
    let signer = chain::signing::load_key(&a.key)?;
    let (st, status) = get(&agent, &format!("{node}/v1/status"))?;
    if st != 200 {
        return Err(api_error(st, &status));
    }
    let domain = domain_of(&status)?;
    let models = if a.models.is_empty() {
        Vec::new()
    } else {
        let (st, list) = get(&agent, &format!("{node}/v1/models"))?;
        if st != 200 {
            return Err(api_error(st, &list));
        }
        let entries = list["data"].as_array().cloned().unwrap_or_default();
        a.models
            .iter()
            .map(|wanted| resolve(&entries, wanted))
            .collect::<Result<Vec<_>>>()?
    };
    if models.len() > chain::record::MAX_GRANT_MODELS {
        bail!(
            "{} models; a key names at most {}",
            models.len(),
            chain::record::MAX_GRANT_MODELS
        );
    }
    let now = chain::types::now_ms() / 1000;
    let expiry = now.saturating_add(a.expires);
    let key = chain::apikey::ApiKey::create(&signer, a.cap, expiry, models.clone(), &domain)
        .context("signing the grant")?;
    let out = json!({
        "api_key": key.encode(),
        "grant_id": key.grant.grant.id(&domain),
        "client": key.grant.grant.client,
        "delegate": key.grant.grant.delegate,
        "cap": a.cap.to_string(),
        "expires_at": expiry,
        "models": models,
    });
    println!("{out}");
    Ok(())
}

/// A model's id from `GET /v1/models` entries, by id or unique name.
fn resolve(entries: &[Value], wanted: &str) -> Result<chain::ModelId> {
    let matches: Vec<&Value> = entries
        .iter()
        .filter(|m| m["id"].as_str() == Some(wanted) || m["name"].as_str() == Some(wanted))
        .collect();
    match matches[..] {
        [m] => m["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| anyhow!("the node lists model {wanted:?} without a valid id")),
        [] => bail!("no model {wanted:?} on this network (see GET /v1/models)"),
        _ => bail!("several models are named {wanted:?}: name it by its id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("12H"), Ok(43_200));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        for bad in [
            "",
            "d",
            "0",
            "0d",
            "-5",
            "1.5h",
            "5w",
            "99999999999999999999d",
            "ten",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn models_resolve_by_id_or_unique_name() {
        let id = chain::ModelId([7; 32]).to_string();
        let entries = vec![
            json!({"id": id, "name": "a"}),
            json!({"id": chain::ModelId([8; 32]).to_string(), "name": "b"}),
            json!({"id": chain::ModelId([9; 32]).to_string(), "name": "b"}),
        ];
        assert_eq!(resolve(&entries, "a").unwrap(), chain::ModelId([7; 32]));
        assert_eq!(resolve(&entries, &id).unwrap(), chain::ModelId([7; 32]));
        assert!(
            resolve(&entries, "b")
                .unwrap_err()
                .to_string()
                .contains("several")
        );
        assert!(
            resolve(&entries, "c")
                .unwrap_err()
                .to_string()
                .contains("no model")
        );
    }
}
