//! `nexusctl template <verb>`.

use nexus_lib::api::Template;
use nexus_lib::api::template::MAX_TEMPLATE_BYTES;
use nexus_lib::client::{Client, ClientError};

use super::build;
use crate::cli::TemplateCommand;
use crate::output::{Printer, fields, table};

pub async fn run(client: &Client, out: Printer, cmd: TemplateCommand) -> Result<u8, ClientError> {
    match cmd {
        TemplateCommand::Create(args) => {
            let source = read_template(&args.file)?;
            let t = client.create_template(&source).await?;
            out.print(&t, || format!("template {} version {}", t.name, t.version));
        }
        TemplateCommand::List => {
            let ts = client.list_templates().await?;
            out.print(&ts, || {
                let rows: Vec<Vec<String>> = ts
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.version.to_string(),
                            t.base.clone(),
                            t.created_at.clone(),
                        ]
                    })
                    .collect();
                table(&["NAME", "VERSION", "BASE", "CREATED"], &rows)
            });
        }
        TemplateCommand::Show(r) => {
            let t = client.get_template(&r.template).await?;
            out.print(&t, || show(&t));
        }
        TemplateCommand::Delete(r) => {
            client.delete_template(&r.template).await?;
            out.print(&serde_json::json!({"deleted": r.template}), || {
                format!("deleted template {}", r.template)
            });
        }
        TemplateCommand::Build(args) => {
            let started = client.start_build(&args.template, args.no_cache).await?;
            let b = build::wait(client, started, args.follow, out.json).await?;
            if !build::succeeded(&b) {
                return Err(build::failed(&b));
            }
            out.print(&b, || build::show(&b));
        }
    }
    Ok(0)
}

/// Reads a template file, bounded like the daemon bounds it.
fn read_template(path: &std::path::Path) -> Result<String, ClientError> {
    let usage = |message: String| ClientError::Api {
        status: 422,
        code: "invalid".into(),
        message,
        field: Some("file".into()),
    };
    let meta = std::fs::metadata(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_TEMPLATE_BYTES as u64 {
        return Err(usage(format!(
            "{} is larger than {MAX_TEMPLATE_BYTES} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))
}

fn show(t: &Template) -> String {
    let mut text = fields(&[
        ("name", t.name.clone()),
        ("version", t.version.to_string()),
        ("id", t.id.to_string()),
        ("base", t.base.clone()),
        ("created", t.created_at.clone()),
    ]);
    text.push('\n');
    text.push_str(&t.source);
    text
}
