//! `nexusctl status`.

use nexus_lib::client::{Client, ClientError};
use nexus_lib::size::format_size;

use crate::output::{Printer, fields};

pub async fn run(client: &Client, out: Printer) -> Result<(), ClientError> {
    let h = client.health().await?;
    out.print(&h, || {
        let mut lines = vec![
            ("nexusd", format!("{} ({})", h.status, h.version)),
            ("uptime", format_ms(h.uptime_ms)),
            ("socket", client.endpoint().to_string()),
            (
                "database",
                format!(
                    "{} (schema v{})",
                    h.database.path, h.database.schema_version
                ),
            ),
        ];
        if let Some(pool) = &h.pool {
            let space = match (pool.free_bytes, pool.total_bytes) {
                (Some(free), Some(total)) => {
                    format!(", {} free of {}", format_size(free), format_size(total))
                }
                _ => String::new(),
            };
            lines.push((
                "pool",
                format!("{} ({}, {}{space})", pool.path, pool.mode, pool.status),
            ));
        }
        fields(&lines)
    });
    Ok(())
}

fn format_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
