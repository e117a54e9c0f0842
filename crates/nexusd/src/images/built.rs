//! Images made by template builds: the stopped build VM's root drive published as a master
//! image (a btrfs snapshot, constant time but for hashing the ext4 file), its row pointing back
//! at the build through its `source` (`build:<id>`).

use nexus_lib::api::{Image, StorageState};
use uuid::Uuid;

use super::{ImageError, ImageService, detached};
use crate::storage::ImageSource;
use crate::store::images::{self, ImageRow, Inserted};

impl ImageService {
    /// Publishes drive `drive` as the image `name`, made by build `build`.
    pub async fn publish_build(
        &self,
        drive: Uuid,
        name: String,
        build: Uuid,
    ) -> Result<Image, ImageError> {
        let this = self.clone();
        detached(async move { this.publish_build_now(drive, name, build).await }).await
    }

    async fn publish_build_now(
        &self,
        drive: Uuid,
        name: String,
        build: Uuid,
    ) -> Result<Image, ImageError> {
        nexus_lib::names::validate_name(&name).map_err(|e| ImageError::Invalid {
            field: "name",
            message: e.to_string(),
        })?;
        let id = Uuid::now_v7();
        let pool = self.pool.clone();
        let info = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
            let storage = pool.get_or_create()?;
            let source = ImageSource::Build(build.to_string().into());
            Ok(storage.image_from_drive(&drive.to_string(), &id.to_string(), source)?)
        })
        .await
        .map_err(ImageError::Worker)??;
        let row = ImageRow {
            id,
            name: name.clone(),
            state: StorageState::Ready,
            size_bytes: info.size_bytes,
            sha256: info.sha256,
            source: format!("build:{build}"),
            created_at_ms: i64::try_from(info.created_at_ms).unwrap_or(i64::MAX),
        };
        let insert = row.clone();
        match self.store.call(move |c| images::insert(c, &insert)).await {
            Ok(Inserted::Ok) => {
                tracing::info!(image = %row.name, %id, %build, "image published from a build");
                Ok(row.to_api())
            }
            Ok(Inserted::NameTaken) => {
                self.remove_subvolume(id).await;
                Err(ImageError::NameTaken(name))
            }
            Err(e) => {
                self.remove_subvolume(id).await;
                Err(e.into())
            }
        }
    }
}
