//! Drive creation is O(1): times `Storage::create_drive` (a btrfs snapshot) for a 64 MiB and a 4 GiB
//! ext4 image on a freshly loop-mounted btrfs, next to a full copy of the same image file to a
//! non-reflink location (`std::fs::copy` plus `fsync`, onto the temporary directory's filesystem), and
//! prints the ratio. Needs root (for the loop mount), btrfs-progs and e2fsprogs.
//!
//! Run with `cargo bench -p nexusd --bench drive_snapshot`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexusd::storage::{ImportBounds, Pool, PoolConfig, Storage, ext4};

const MIB: u64 = 1 << 20;
const SNAPSHOT_ITERATIONS: usize = 20;

struct Case {
    label: &'static str,
    image_size: u64,
    random_data: u64,
    copy_iterations: usize,
}

const CASES: [Case; 2] = [
    Case {
        label: "64 MiB",
        image_size: 64 * MIB,
        random_data: 32 * MIB,
        copy_iterations: 5,
    },
    Case {
        label: "4 GiB",
        image_size: 4096 * MIB,
        random_data: 64 * MIB,
        copy_iterations: 2,
    },
];

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the drive_snapshot bench needs root (to loop-mount btrfs)"
    );
    let scratch = tempfile::tempdir().expect("create temporary directory");
    let config = PoolConfig::Image {
        file: scratch.path().join("pool.img"),
        size: 16 << 30,
        mountpoint: scratch.path().join("pool"),
    };
    let pool = Pool::open(&config).expect("format and mount the bench pool (mkfs.btrfs, mount)");
    let result = std::panic::catch_unwind(|| run(&pool, scratch.path()));
    if let Err(e) = pool.close() {
        eprintln!("unmounting the bench pool: {e}");
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run(pool: &Pool, scratch: &Path) {
    let storage = Storage::open(pool.root()).expect("open storage");
    println!(
        "drive creation = Storage::create_drive (writable btrfs snapshot), {SNAPSHOT_ITERATIONS} iterations"
    );
    println!("full copy      = std::fs::copy of rootfs.ext4 to ext4 scratch + fsync");
    println!();
    println!(
        "{:<8} {:>14} {:>14} {:>16} {:>14}",
        "image", "create median", "create p95", "full copy median", "copy/create"
    );
    let images: Vec<(String, PathBuf)> = CASES
        .iter()
        .enumerate()
        .map(|(n, case)| {
            let id = format!("bench-{n}");
            let path = import_image(&storage, scratch, &id, case);
            (id, path)
        })
        .collect();
    nix::unistd::sync();

    // Interleaved, so drift in the filesystem's state affects both sizes alike.
    let mut creates = vec![Vec::new(); CASES.len()];
    for i in 0..SNAPSHOT_ITERATIONS {
        for ((image_id, _), samples) in images.iter().zip(&mut creates) {
            let drive_id = format!("{image_id}-d{i}");
            let started = Instant::now();
            storage
                .create_drive(image_id, &drive_id, None)
                .expect("create drive");
            samples.push(started.elapsed());
            storage.delete_drive(&drive_id).expect("delete drive");
            // Commit the deletion now so the next snapshot's commit does not pay for it.
            nix::unistd::sync();
        }
    }

    let target = scratch.join("copy.ext4");
    for ((case, (image_id, image)), samples) in CASES.iter().zip(&images).zip(&mut creates) {
        let mut copies: Vec<Duration> = (0..case.copy_iterations)
            .map(|_| {
                let started = Instant::now();
                fs::copy(image, &target).expect("full copy");
                File::open(&target)
                    .and_then(|f| f.sync_all())
                    .expect("fsync copy");
                let elapsed = started.elapsed();
                fs::remove_file(&target).expect("remove copy");
                elapsed
            })
            .collect();
        let create_median = percentile(samples, 50);
        let copy_median = percentile(&mut copies, 50);
        println!(
            "{:<8} {:>11.3} ms {:>11.3} ms {:>13.1} ms {:>13.0}x",
            case.label,
            ms(create_median),
            ms(percentile(samples, 95)),
            ms(copy_median),
            copy_median.as_secs_f64() / create_median.as_secs_f64(),
        );
        storage.delete_image(image_id).expect("delete image");
    }
}

/// Builds a real ext4 image of `case.image_size` holding `case.random_data` bytes of incompressible
/// data and imports it; returns the path of the image's `rootfs.ext4` in the pool.
fn import_image(storage: &Storage, scratch: &Path, id: &str, case: &Case) -> PathBuf {
    let content = scratch.join(format!("{id}-content"));
    fs::create_dir_all(&content).expect("create content dir");
    write_random(&content.join("data.bin"), case.random_data);
    let source = scratch.join(format!("{id}.ext4"));
    ext4::build_from_dir(&content, &source, case.image_size).expect("mke2fs -d");
    let info = storage
        .import_image_from_ext4(&source, &source, id, &ImportBounds::unbounded())
        .expect("import image");
    fs::remove_file(&source).expect("remove source image");
    fs::remove_dir_all(&content).expect("remove content dir");
    info.path
}

/// Writes `len` bytes from a xorshift generator: cheap, and nothing compresses or dedups it.
fn write_random(path: &Path, len: u64) {
    let mut file = File::create(path).expect("create random file");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..len / MIB {
        for chunk in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&buf).expect("write random data");
    }
}

/// The `p`th percentile (nearest rank) of `samples`.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
