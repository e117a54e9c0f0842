//! `nexusctl token <verb>`: API tokens for the TCP listener.

use nexus_lib::api::{CreateToken, Token};
use nexus_lib::client::{Client, ClientError};

use crate::cli::TokenCommand;
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: TokenCommand) -> Result<(), ClientError> {
    match cmd {
        TokenCommand::Create(args) => {
            let created = client
                .create_token(&CreateToken {
                    vms: args.vms,
                    lifecycle: args.lifecycle,
                    name: args.name,
                })
                .await?;
            out.print(&created, || {
                let mut text = show(&created.info);
                text.push_str(&format!(
                    "\n{}\n\nThe secret is shown only now: send it as `Authorization: Bearer <token>` on the TCP listener.\n",
                    created.token
                ));
                text
            });
        }
        TokenCommand::List => {
            let tokens = client.list_tokens().await?;
            out.print(&tokens, || {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.to_string(),
                            t.name.clone().unwrap_or_default(),
                            vms(t),
                            if t.lifecycle { "yes" } else { "no" }.to_string(),
                            t.created_at.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "VMS", "LIFECYCLE", "CREATED"], &rows)
            });
        }
        TokenCommand::Revoke(r) => {
            client.revoke_token(&r.id).await?;
            out.print(&serde_json::json!({"revoked": r.id}), || {
                format!("revoked {}", r.id)
            });
        }
    }
    Ok(())
}

fn vms(t: &Token) -> String {
    if t.vms.is_empty() {
        "-".into()
    } else {
        t.vms.join(",")
    }
}

fn show(t: &Token) -> String {
    fields(&[
        ("id", t.id.to_string()),
        ("name", t.name.clone().unwrap_or_default()),
        ("vms", vms(t)),
        ("lifecycle", t.lifecycle.to_string()),
        ("created", t.created_at.clone()),
    ])
}
