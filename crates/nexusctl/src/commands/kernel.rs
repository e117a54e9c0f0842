//! `nexusctl kernel <verb>`: assets of kind `kernel`.

use nexus_lib::api::AssetKind;
use nexus_lib::client::{Client, ClientError};

use super::{asset, download};
use crate::cli::KernelCommand;
use crate::output::Printer;

pub async fn run(client: &Client, out: Printer, cmd: KernelCommand) -> Result<u8, ClientError> {
    let kernel = Some(AssetKind::Kernel);
    match cmd {
        KernelCommand::List => asset::list(client, out, &[kernel]).await?,
        KernelCommand::Download(args) => {
            let req = download::request(
                args.provider,
                &[("package", args.package), ("version", args.version)],
                &args.vars,
            );
            let assets = download::run(client, &req, out.json).await?;
            out.print(&assets, || asset::assets_table(&assets));
        }
        KernelCommand::Build(args) => {
            let req = download::request(
                args.provider,
                &[
                    ("package", args.package),
                    ("rebuild", args.rebuild.then(|| "true".to_owned())),
                    ("jobs", args.jobs.map(|j| j.to_string())),
                ],
                &args.vars,
            );
            let assets = download::run(client, &req, out.json).await?;
            out.print(&assets, || asset::assets_table(&assets));
        }
        KernelCommand::Verify(r) => return asset::verify(client, out, &[(r.asset, kernel)]).await,
        KernelCommand::Remove(r) => asset::remove(client, out, &[(r.asset, kernel)]).await?,
    }
    Ok(0)
}
