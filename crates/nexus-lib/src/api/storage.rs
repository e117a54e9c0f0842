//! Wire types of the storage resources: master images (`/v1/images`), drives (`/v1/drives`) and the
//! pool's part of the health report.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::size::ByteSize;

/// Whether an image or drive can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StorageState {
    /// Its subvolume is in the pool.
    Ready,
    /// Its subvolume was found missing at start-up; it can only be deleted.
    Broken,
}

impl StorageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Broken => "broken",
        }
    }
}

impl std::fmt::Display for StorageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StorageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ready" => Ok(Self::Ready),
            "broken" => Ok(Self::Broken),
            other => Err(format!("unknown storage state {other:?}")),
        }
    }
}

/// A master image: a read-only ext4 filesystem that drives are snapshots of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: Uuid,
    pub name: String,
    pub state: StorageState,
    /// Size of the ext4 filesystem (`rootfs.ext4`).
    pub size_bytes: u64,
    /// sha256 of `rootfs.ext4`, lowercase hex.
    pub sha256: String,
    /// Where it was imported from: `ext4:<path>` or `dir:<path>`.
    pub source: String,
    /// RFC 3339, millisecond precision.
    pub created_at: String,
}

/// Longest `path` of [`CreateImage`], in characters (at most 4096 bytes, `PATH_MAX`).
pub const MAX_IMAGE_PATH_CHARS: usize = 1024;

/// Body of `POST /v1/images`: import a master image from a path on the daemon's host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    /// An ext4 image file or a directory (built into ext4 with `mke2fs -d`), on the daemon's host:
    /// an absolute path of at most 1024 characters. Empty (or absent) when `asset` is given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(pattern = "^/", max_length = 1024)]
    pub path: String,
    /// Instead of `path`: a `rootfs` asset (a tarball in the asset store, by id, name or
    /// NAME@VERSION), unpacked safely into an ext4 image with the guest agent at
    /// `/sbin/nexus-agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 200)]
    pub asset: Option<String>,
    /// Make the ext4 filesystem at least this big (directory and asset imports; more when the
    /// content needs it). An ext4 file keeps its own size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique, not of the form of a UUID; default: derived from the
    /// path's file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: Option<String>,
}

/// A drive: a writable copy-on-write snapshot of an image, optionally attached to a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Drive {
    pub id: Uuid,
    pub name: String,
    pub state: StorageState,
    pub image_id: Uuid,
    /// Size of the drive's ext4 filesystem, what the guest sees.
    pub size_bytes: u64,
    /// The VM it is attached to.
    #[serde(default)]
    pub vm_id: Option<Uuid>,
    /// Attached as the VM's root drive.
    pub is_root: bool,
    /// Made by `POST /v1/vms` with `image`: deleted with the VM unless `keep_drives` is asked for.
    pub created_with_vm: bool,
    /// RFC 3339, millisecond precision.
    pub created_at: String,
}

/// Body of `POST /v1/drives`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDrive {
    /// Image id or name.
    pub image: String,
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique, not of the form of a UUID; default:
    /// `<image>-<short id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub name: Option<String>,
    /// Grow the filesystem to this size (not smaller than the image); default: the image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
}

/// Body of `POST /v1/drives/{drive}/attach`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDrive {
    /// VM id or name.
    pub vm: String,
    /// Attach as the VM's root drive (one per VM).
    #[serde(default)]
    pub root: bool,
}

/// Query of `DELETE /v1/vms/{vm}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VmDeleteQuery {
    /// Keep the drives created with the VM (they are detached instead of deleted).
    #[serde(default)]
    pub keep_drives: bool,
}

/// The storage pool's part of the health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolHealth {
    /// The pool's root directory.
    pub path: String,
    /// `dir` (an existing btrfs directory) or `image` (the embedded loop-mounted image file).
    pub mode: String,
    /// `ready`, `not created yet` (the embedded pool is made on the first import) or `unavailable`.
    pub status: String,
    /// Whether the pool is open and mounted.
    pub mounted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Why the pool is unavailable, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
