//! `nexusctl firecracker <verb>`: the `firecracker` and `jailer` assets of a release.

use nexus_lib::api::AssetKind;
use nexus_lib::client::{Client, ClientError};

use super::{asset, download};
use crate::cli::FirecrackerCommand;
use crate::output::Printer;

/// The assets of release `version`: firecracker, and jailer when it is installed.
async fn release(
    client: &Client,
    version: &str,
) -> Result<Vec<(String, Option<AssetKind>)>, ClientError> {
    let version = version.trim_start_matches('v');
    let mut refs = Vec::new();
    for (name, kind) in [
        ("firecracker", AssetKind::Firecracker),
        ("jailer", AssetKind::Jailer),
    ] {
        let key = format!("{name}@{version}");
        match client.get_asset(&key, Some(kind)).await {
            Ok(_) => refs.push((key, Some(kind))),
            Err(e) if e.status() == Some(404) && kind == AssetKind::Jailer => {}
            Err(e) => return Err(e),
        }
    }
    Ok(refs)
}

pub async fn run(
    client: &Client,
    out: Printer,
    cmd: FirecrackerCommand,
) -> Result<u8, ClientError> {
    match cmd {
        FirecrackerCommand::List => {
            let kinds = [Some(AssetKind::Firecracker), Some(AssetKind::Jailer)];
            asset::list(client, out, &kinds).await?
        }
        FirecrackerCommand::Download(args) => {
            let version = args.version.map(|v| v.trim_start_matches('v').to_owned());
            let req = download::request(args.provider, &[("version", version)], &args.vars);
            let assets = download::run(client, &req, out.json).await?;
            out.print(&assets, || asset::assets_table(&assets));
        }
        FirecrackerCommand::Verify(r) => {
            let refs = release(client, &r.version).await?;
            return asset::verify(client, out, &refs).await;
        }
        FirecrackerCommand::Remove(r) => {
            let refs = release(client, &r.version).await?;
            asset::remove(client, out, &refs).await?
        }
    }
    Ok(0)
}
