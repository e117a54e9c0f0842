//! `nexusctl rootfs <verb>`: assets of kind `rootfs`, and `rootfs build`, which builds one
//! (`debian`: the `debian-rootfs` provider's mmdebstrap pipeline) and imports it as an image.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use nexus_lib::api::{Asset, AssetKind, CreateImage, Image};
use nexus_lib::client::{Client, ClientError};
use nexus_lib::size::ByteSize;
use serde::Serialize;

use super::{asset, download, image};
use crate::cli::{Distro, RootfsBuildArgs, RootfsCommand};
use crate::output::Printer;

/// What `rootfs build` made.
#[derive(Debug, Serialize)]
struct Built {
    asset: Asset,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<Image>,
}

pub async fn run(client: &Client, out: Printer, cmd: RootfsCommand) -> Result<u8, ClientError> {
    let rootfs = Some(AssetKind::Rootfs);
    match cmd {
        RootfsCommand::List => asset::list(client, out, &[rootfs]).await?,
        RootfsCommand::Download(args) => {
            let req = download::request(
                args.provider,
                &[
                    ("url", args.url),
                    ("sha256", args.sha256),
                    ("name", args.name),
                    ("version", args.version),
                    ("kind", Some(AssetKind::Rootfs.to_string())),
                ],
                &args.vars,
            );
            let assets = download::run(client, &req, out.json).await?;
            out.print(&assets, || asset::assets_table(&assets));
        }
        RootfsCommand::Build(args) => build(client, out, args).await?,
        RootfsCommand::Verify(r) => return asset::verify(client, out, &[(r.asset, rootfs)]).await,
        RootfsCommand::Remove(r) => asset::remove(client, out, &[(r.asset, rootfs)]).await?,
    }
    Ok(0)
}

async fn build(client: &Client, out: Printer, args: RootfsBuildArgs) -> Result<(), ClientError> {
    let Distro::Debian = args.distro;
    let req = download::request(
        args.provider,
        &[
            ("suite", args.suite),
            ("variant", args.variant),
            ("packages", args.packages),
        ],
        &args.vars,
    );
    let assets = download::run(client, &req, out.json).await?;
    let asset = assets
        .into_iter()
        .find(|a| a.kind == AssetKind::Rootfs)
        .ok_or_else(|| ClientError::Decode("the build installed no rootfs asset".into()))?;
    if args.no_import {
        let built = Built { asset, image: None };
        out.print(&built, || {
            asset::assets_table(std::slice::from_ref(&built.asset))
        });
        return Ok(());
    }
    let image = import(client, &asset, args.image, args.size, out.json).await?;
    let built = Built {
        asset,
        image: Some(image),
    };
    out.print(&built, || {
        let image = built.image.as_ref().map(image::show).unwrap_or_default();
        format!(
            "{}\n{image}",
            asset::assets_table(std::slice::from_ref(&built.asset))
        )
    });
    Ok(())
}

/// Imports `asset` as the image `name`, by default its own name (`debian-bookworm`); when an
/// image of that name holds another asset, the name gets the asset's short hash. An image made
/// from this very asset already is the answer.
async fn import(
    client: &Client,
    asset: &Asset,
    name: Option<String>,
    size: Option<ByteSize>,
    quiet: bool,
) -> Result<Image, ClientError> {
    let name = match name {
        Some(n) => n,
        None => match client.get_image(&asset.name).await {
            Ok(existing) if existing.source.contains(&asset.sha256) => return Ok(existing),
            Ok(_) => format!("{}-{}", asset.name, &asset.sha256[..8]),
            Err(e) if e.status() == Some(404) => asset.name.clone(),
            Err(e) => return Err(e),
        },
    };
    let bar = (!quiet).then(|| {
        let b = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix:>16} {spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_prefix("image import");
        b.set_message(format!(
            "{}@{} into image {name} (unpack, agent, mke2fs)",
            asset.name, asset.version
        ));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let result = client
        .import_image(&CreateImage {
            path: String::new(),
            name: Some(name),
            asset: Some(asset.id.to_string()),
            size,
        })
        .await;
    if let Some(b) = bar {
        match &result {
            Ok(_) => b.finish(),
            Err(_) => b.abandon(),
        }
    }
    result
}
