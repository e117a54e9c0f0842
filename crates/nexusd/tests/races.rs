//! Races and disconnects through the real nexusd on a real btrfs pool (needs root, btrfs-progs,
//! e2fsprogs): creates racing a delete never answer 500, a client that goes away mid-create leaves
//! no subvolume without a row, and kill -9 during concurrent creates leaves rows and subvolumes
//! that agree after a restart. Races run many rounds, bounded in count and time.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestDaemon, entries, sample_tree};
use nexus_lib::api::{CreateDrive, CreateImage, CreateVm};
use nexus_lib::client::{Client, ClientError};
use nexus_lib::size::ByteSize;

/// Most rounds a race runs, and the most time it may take.
const ROUNDS: usize = 20;
const RACE_BUDGET: Duration = Duration::from_secs(90);
/// How long a disconnected operation may take to settle.
const SETTLE: Duration = Duration::from_secs(60);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// The status of an answer: 2xx for success, the daemon's status for its errors. Anything else
/// (a broken connection, an undecodable answer) fails the test.
fn status<T>(what: &str, r: &Result<T, ClientError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("{what}: not an API answer: {e:?}")),
    }
}

fn import(tree: &Path, name: &str) -> CreateImage {
    CreateImage {
        path: tree.display().to_string(),
        name: Some(name.into()),
        asset: None,
        size: None,
    }
}

fn vm_with_image(name: &str, image: &str) -> CreateVm {
    CreateVm {
        name: name.into(),
        image: Some(image.into()),
        ..CreateVm::default()
    }
}

fn drive_from(image: &str, size: Option<ByteSize>) -> CreateDrive {
    CreateDrive {
        image: image.into(),
        name: None,
        size,
    }
}

/// Image and drive ids as the API lists them and as the pool holds them, and what `tmp/` holds.
#[derive(Debug, PartialEq)]
struct Agreement {
    images: (BTreeSet<String>, BTreeSet<String>),
    drives: (BTreeSet<String>, BTreeSet<String>),
    tmp: Vec<String>,
}

impl Agreement {
    fn agrees(&self) -> bool {
        self.images.0 == self.images.1 && self.drives.0 == self.drives.1 && self.tmp.is_empty()
    }
}

async fn agreement(client: &Client, pool: &Path) -> Agreement {
    let images = client.list_images().await.unwrap();
    let drives = client.list_drives().await.unwrap();
    Agreement {
        images: (
            images.iter().map(|i| i.id.to_string()).collect(),
            entries(&pool.join("images")).into_iter().collect(),
        ),
        drives: (
            drives.iter().map(|d| d.id.to_string()).collect(),
            entries(&pool.join("drives")).into_iter().collect(),
        ),
        tmp: entries(&pool.join("tmp")),
    }
}

/// Waits (bounded) until the API lists exactly the pool's subvolumes and `tmp/` is empty.
async fn settled(client: &Client, pool: &Path) -> Agreement {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = agreement(client, pool).await;
        if now.agrees() || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes every VM, drive and image through the API.
async fn clear(client: &Client) {
    for vm in client.list_vms(None).await.unwrap() {
        client.delete_vm(&vm.name, false).await.unwrap();
    }
    for drive in client.list_drives().await.unwrap() {
        client.delete_drive(&drive.name).await.unwrap();
    }
    for image in client.list_images().await.unwrap() {
        client.delete_image(&image.name).await.unwrap();
    }
}

#[test]
fn creating_vms_with_an_image_while_it_is_deleted_never_answers_500() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    let rt = runtime();
    let t0 = Instant::now();
    let mut seen = Vec::new();

    for round in 0..ROUNDS {
        if t0.elapsed() > RACE_BUDGET {
            break;
        }
        let image = format!("img{round}");
        rt.block_on(d.client.import_image(&import(&tree, &image)))
            .unwrap();
        let (va, vb) = (
            vm_with_image(&format!("a{round}"), &image),
            vm_with_image(&format!("b{round}"), &image),
        );
        let (a, b, del) = rt.block_on(async {
            let delay = Duration::from_millis((round % 4) as u64);
            tokio::join!(d.client.create_vm(&va), d.client.create_vm(&vb), async {
                tokio::time::sleep(delay).await;
                d.client.delete_image(&image).await
            })
        });
        seen.push((
            status("create a", &a),
            status("create b", &b),
            status("delete", &del),
        ));
        rt.block_on(clear(&d.client));
    }

    assert_no_500_and_agreement(&d, &rt, &seen);
}

#[test]
fn creating_drives_while_the_image_is_deleted_never_answers_500() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    let rt = runtime();
    let t0 = Instant::now();
    let mut seen = Vec::new();

    for round in 0..ROUNDS {
        if t0.elapsed() > RACE_BUDGET {
            break;
        }
        let image = format!("img{round}");
        rt.block_on(d.client.import_image(&import(&tree, &image)))
            .unwrap();
        let (da, db) = (
            drive_from(&image, None),
            drive_from(&image, Some(ByteSize(64 << 20))),
        );
        let (a, b, del) = rt.block_on(async {
            let delay = Duration::from_millis((round % 4) as u64);
            tokio::join!(
                d.client.create_drive(&da),
                d.client.create_drive(&db),
                async {
                    tokio::time::sleep(delay).await;
                    d.client.delete_image(&image).await
                }
            )
        });
        seen.push((
            status("create", &a),
            status("create with size", &b),
            status("delete", &del),
        ));
        rt.block_on(clear(&d.client));
    }

    assert_no_500_and_agreement(&d, &rt, &seen);
}

/// Every round answered only 200/404/409 (create, create, delete), enough rounds ran, and the
/// pool and the API agree at the end.
fn assert_no_500_and_agreement(
    d: &TestDaemon,
    rt: &tokio::runtime::Runtime,
    seen: &[(u16, u16, u16)],
) {
    assert!(seen.len() >= 5, "only {} rounds ran", seen.len());
    assert!(
        seen.iter()
            .all(|(a, b, del)| [*a, *b, *del].iter().all(|s| [200, 404, 409].contains(s))),
        "statuses per round (create, create, delete): {seen:?}\n{}",
        d.log()
    );
    let end = rt.block_on(agreement(&d.client, &d.pool_root()));
    assert!(end.agrees(), "{end:?}\n{seen:?}\n{}", d.log());
}

/// A tree big enough that its import takes a while (about 32 MiB of incompressible data).
fn big_tree(at: &Path) -> std::path::PathBuf {
    let tree = sample_tree(at);
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for i in 0..8 {
        let data: Vec<u8> = (0..4 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(tree.join(format!("blob{i}")), data).unwrap();
    }
    tree
}

#[test]
fn a_client_that_disconnects_mid_import_leaves_no_subvolume_without_a_row() {
    let d = TestDaemon::start_with_storage();
    let tree = big_tree(d.home());
    let rt = runtime();
    let t0 = Instant::now();
    let mut rounds = 0;

    for round in 0..8u64 {
        if t0.elapsed() > RACE_BUDGET {
            break;
        }
        let req = import(&tree, &format!("cut{round}"));
        // Cut at different points of the import: before, during and after the subvolume appears.
        let cut = Duration::from_millis(50 + round * 60);
        let _ = rt.block_on(async { tokio::time::timeout(cut, d.client.import_image(&req)).await });
        let after = rt.block_on(settled(&d.client, &d.pool_root()));
        assert!(after.agrees(), "round {round}: {after:?}\n{}", d.log());
        rounds += 1;
    }

    assert!(rounds >= 4, "only {rounds} rounds ran");
}

#[test]
fn a_client_that_disconnects_mid_drive_create_leaves_no_subvolume_without_a_row() {
    let d = TestDaemon::start_with_storage();
    let tree = big_tree(d.home());
    let rt = runtime();
    rt.block_on(d.client.import_image(&import(&tree, "base")))
        .unwrap();
    let t0 = Instant::now();
    let mut rounds = 0;

    for round in 0..ROUNDS as u64 {
        if t0.elapsed() > RACE_BUDGET {
            break;
        }
        // Growing the drive (resize2fs) is the slow part; cut before, during and after it.
        let req = drive_from("base", Some(ByteSize(256 << 20)));
        let cut = Duration::from_millis(round * 5);
        let _ = rt.block_on(async { tokio::time::timeout(cut, d.client.create_drive(&req)).await });
        let vm = vm_with_image(&format!("v{round}"), "base");
        let _ = rt.block_on(async { tokio::time::timeout(cut, d.client.create_vm(&vm)).await });
        let after = rt.block_on(settled(&d.client, &d.pool_root()));
        assert!(after.agrees(), "round {round}: {after:?}\n{}", d.log());
        rounds += 1;
    }

    assert!(rounds >= 5, "only {rounds} rounds ran");
}

/// Lines of `/proc/mounts` and `losetup -a` that mention `home`.
fn mounts_and_loops_of(home: &Path) -> Vec<String> {
    let home = home.display().to_string();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .expect("run losetup -a");
    mounts
        .lines()
        .chain(String::from_utf8_lossy(&loops.stdout).lines())
        .filter(|l| l.contains(&home))
        .map(str::to_owned)
        .collect()
}

/// Starts 50 concurrent VM-with-image creates and 50 drive creates, kills nexusd with SIGKILL
/// once a few have finished, restarts it and returns the agreement it then shows, then stops it
/// cleanly (asserting a clean exit).
fn kill_9_during_50_concurrent_creates() -> (TestDaemon, Agreement) {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    let rt = runtime();
    rt.block_on(d.client.import_image(&import(&tree, "base")))
        .unwrap();
    let client = d.client.clone();
    let creates = rt.spawn(async move {
        let all = (0..50).map(|i| {
            let client = client.clone();
            async move {
                let (vm, drive) = (
                    vm_with_image(&format!("vm{i}"), "base"),
                    drive_from("base", Some(ByteSize(64 << 20))),
                );
                let _ = tokio::join!(client.create_vm(&vm), client.create_drive(&drive));
            }
        });
        futures_util::future::join_all(all).await;
    });
    // Some creates have finished, most are in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(d.client.list_drives()).unwrap().len() < 5 {
        assert!(Instant::now() < deadline, "no create finished\n{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }

    let mut d = d.kill_and_restart();
    rt.block_on(creates).unwrap();
    let after = rt.block_on(agreement(&d.client, &d.pool_root()));
    let status = d.stop();
    assert!(status.success(), "nexusd exited with {status}\n{}", d.log());
    (d, after)
}

#[test]
fn kill_9_during_50_concurrent_creates_leaves_rows_and_subvolumes_that_agree() {
    let (d, after) = kill_9_during_50_concurrent_creates();

    assert!(after.agrees(), "{after:?}\n{}", d.log());
}

#[test]
fn kill_9_during_creates_then_a_clean_shutdown_leaves_no_mount_or_loop_device() {
    let (d, _) = kill_9_during_50_concurrent_creates();

    assert_eq!(mounts_and_loops_of(d.home()), Vec::<String>::new());
}
