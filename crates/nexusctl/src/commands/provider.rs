//! `nexusctl provider <verb>`.

use nexus_lib::api::{CreateProvider, Provider};
use nexus_lib::client::{Client, ClientError};

use crate::cli::ProviderCommand;
use crate::output::{Printer, fields, table};

/// A JSON argument given inline or as `@FILE`.
fn json_arg<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T, ClientError> {
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| ClientError::Api {
            status: 422,
            code: "invalid".into(),
            message: format!("--{flag}: cannot read {path}: {e}"),
            field: Some(flag.into()),
        })?,
        None => value.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| ClientError::Api {
        status: 422,
        code: "invalid".into(),
        message: format!("--{flag}: {e}"),
        field: Some(flag.into()),
    })
}

pub async fn run(client: &Client, out: Printer, cmd: ProviderCommand) -> Result<(), ClientError> {
    match cmd {
        ProviderCommand::List => {
            let providers = client.list_providers().await?;
            out.print(&providers, || {
                let rows: Vec<Vec<String>> = providers
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.kind.to_string(),
                            if p.builtin { "yes" } else { "no" }.into(),
                            p.stages.len().to_string(),
                            p.settings.base_url.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["NAME", "KIND", "BUILTIN", "STAGES", "BASE URL"], &rows)
            });
        }
        ProviderCommand::Show(r) => {
            let p = client.get_provider(&r.provider).await?;
            out.print(&p, || show(&p));
        }
        ProviderCommand::Add(args) => {
            let req = CreateProvider {
                name: args.name,
                kind: args.kind,
                settings: match &args.settings {
                    Some(s) => json_arg("settings", s)?,
                    None => Default::default(),
                },
                stages: args
                    .stages
                    .as_deref()
                    .map(|s| json_arg("stages", s))
                    .transpose()?,
            };
            let p = client.add_provider(&req).await?;
            out.print(&p, || show(&p));
        }
        ProviderCommand::Remove(r) => {
            client.remove_provider(&r.provider).await?;
            out.print(&serde_json::json!({"removed": r.provider}), || {
                format!("removed {}", r.provider)
            });
        }
    }
    Ok(())
}

fn show(p: &Provider) -> String {
    let stages: String = p
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "\n  {}. {}",
                i + 1,
                serde_json::to_string(s).unwrap_or_default()
            )
        })
        .collect();
    fields(&[
        ("name", p.name.clone()),
        ("kind", p.kind.to_string()),
        ("builtin", p.builtin.to_string()),
        (
            "settings",
            serde_json::to_string(&p.settings).unwrap_or_default(),
        ),
        ("stages", stages),
        ("created", p.created_at.clone()),
    ])
}
