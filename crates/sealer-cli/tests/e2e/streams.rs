//! `save -o` onto what is not a regular file (FIFO, character device, symlink, stdout) is
//! written into, never replaced; `load -i` reads stdin, `/dev/stdin` and `<(…)`.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The bytes `save` writes into a regular file: what every other output must receive.
fn reference_archive(sealer: &Sealer, work: &std::path::Path) -> Vec<u8> {
    let file = work.join("reference.tar");
    sealer.ok(&["save", "-o", arg(&file), SINGLE]);
    std::fs::read(&file).expect("read reference archive")
}

fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn save_onto_a_fifo_writes_into_it_and_leaves_it_a_fifo() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    let expected = reference_archive(&sealer, work.path());
    let fifo = work.path().join("pipe");
    mkfifo(&fifo);
    let (sender, received) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::fs::File::open(&fifo)
                .expect("open fifo for reading")
                .read_to_end(&mut bytes)
                .expect("read fifo");
            let _ = sender.send(bytes);
        });
    }
    sealer.ok(&["save", "-o", arg(&fifo), SINGLE]);
    // Bounded: a save that replaced the FIFO never opened it, and the reader waits forever.
    let received = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the FIFO's reader got nothing");
    assert!(received == expected, "the FIFO's reader got other bytes");
    let kind = std::fs::symlink_metadata(&fifo)
        .expect("stat fifo")
        .file_type();
    assert!(kind.is_fifo(), "{fifo:?} was replaced: {kind:?}");
}

#[test]
fn save_onto_a_character_device_leaves_it_in_place() {
    let work = temp();
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid()
        != 0
    {
        println!("SKIPPED: making a character device with mknod needs root");
        return;
    }
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    // The null device (1:3), made in the temp dir: the system's is not at stake.
    let device = work.path().join("null");
    let status = Command::new("mknod")
        .arg(&device)
        .args(["c", "1", "3"])
        .status()
        .expect("run mknod");
    if !status.success() {
        println!("SKIPPED: mknod is not allowed here (a container without CAP_MKNOD?)");
        return;
    }
    let before = std::fs::symlink_metadata(&device).expect("stat device");
    let out = sealer.ok(&["save", "-o", arg(&device), SINGLE]);
    assert!(out.contains(&format!("Wrote {}", arg(&device))), "{out}");
    let after = std::fs::symlink_metadata(&device).expect("stat device");
    assert!(after.file_type().is_char_device(), "{after:?}");
    assert_eq!((before.ino(), before.rdev()), (after.ino(), after.rdev()));
    assert_eq!(dir_names(work.path()), ["null", "store"]);
}

#[test]
fn save_through_a_symlink_replaces_its_target_and_keeps_the_link() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    let expected = reference_archive(&sealer, work.path());
    let target = work.path().join("target.tar");
    std::fs::write(&target, b"old").expect("write target");
    let link = work.path().join("link.tar");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    sealer.ok(&["save", "-o", arg(&link), SINGLE]);
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("stat link")
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read(&target).expect("read target") == expected);
    // A dangling link is refused, not replaced by a file.
    let dangling = work.path().join("dangling.tar");
    std::os::unix::fs::symlink(work.path().join("nowhere"), &dangling).expect("symlink");
    let message = sealer.fails(&["save", "-o", arg(&dangling), SINGLE]);
    assert!(message.contains("symlink to nothing"), "{message}");
    assert!(
        std::fs::symlink_metadata(&dangling)
            .expect("stat")
            .file_type()
            .is_symlink()
    );
}

/// The peak resident memory (`VmHWM`, KiB) of a running process.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn save_to_stdout_piped_into_load_from_stdin_keeps_digests_with_flat_memory() {
    const LAYER: u64 = 48 << 20;
    let work = temp();
    let source = Sealer::new(work.path().join("source"));
    let digest = build_big_image(&source.root, "docker.io/library/big:1", LAYER);
    let target = Sealer::new(work.path().join("target"));
    std::fs::create_dir_all(&target.root).expect("create target root");
    let mut save = source
        .command(&["save", "-o", "-", "docker.io/library/big:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start save");
    let pipe = save.stdout.take().expect("save's stdout");
    let mut load = target
        .command(&["load", "-i", "-"])
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start load");
    // Sampled while the archive flows: buffering it would grow with every sample.
    let mut peak_kib = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.try_wait().expect("poll load").is_none() {
        assert!(Instant::now() < deadline, "load did not finish in 120 s");
        if let Some(kib) = peak_rss_kib(load.id()) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let save = save.wait_with_output().expect("wait for save");
    let load = load.wait_with_output().expect("wait for load");
    let save_err = String::from_utf8_lossy(&save.stderr);
    assert!(save.status.success(), "{save_err}");
    assert!(
        save_err.contains("Wrote the archive to stdout"),
        "{save_err}"
    );
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    assert_eq!(target.digest_of("docker.io/library/big:1"), digest);
    assert!(
        peak_kib > 0 && peak_kib < (LAYER >> 10) * 3 / 4,
        "load's peak memory was {peak_kib} KiB for a {LAYER}-byte archive"
    );
}

#[test]
fn load_reads_dev_stdin_and_process_substitution() {
    let work = temp();
    let source = Sealer::new(work.path().join("source"));
    let (single, _) = standard_images(&source.root);
    let archive = work.path().join("a.tar");
    source.ok(&["save", "-o", arg(&archive), SINGLE]);

    // `load -i /dev/stdin < a.tar` and `cat a.tar | load -i /dev/stdin`.
    let target = Sealer::new(work.path().join("t1"));
    let output = target
        .command(&["load", "-i", "/dev/stdin"])
        .stdin(std::fs::File::open(&archive).expect("open archive"))
        .output()
        .expect("run load");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(target.digest_of(SINGLE), single);
    let target = Sealer::new(work.path().join("t2"));
    let mut cat = Command::new("cat")
        .arg(&archive)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start cat");
    let output = target
        .command(&["load", "-i", "/dev/stdin"])
        .stdin(Stdio::from(cat.stdout.take().expect("cat's stdout")))
        .output()
        .expect("run load");
    cat.wait().expect("wait for cat");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(target.digest_of(SINGLE), single);

    // `load -i <(cat a.tar)`: a /dev/fd/N symlink to a pipe.
    let target = Sealer::new(work.path().join("t3"));
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" --root "$1" load -i <(cat "$2")"#)
        .arg(env!("CARGO_BIN_EXE_sealer"))
        .arg(&target.root)
        .arg(&archive)
        .env_remove("SEALER_ROOT")
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(target.digest_of(SINGLE), single);
}

/// `skopeo copy … docker-archive:/dev/stdout | sealer load -i -`: the archive skopeo writes
/// into a pipe loads, with the config skopeo wrote.
#[test]
fn skopeo_docker_archive_on_stdout_loads_from_stdin() {
    crate::require_tools!("skopeo");
    let work = temp();
    let fixtures = work.path().join("fixtures");
    standard_images(&fixtures);
    let mut skopeo = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{}:{SINGLE}", arg(&fixtures)),
            &format!("docker-archive:/dev/stdout:{SINGLE}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skopeo");
    let sealer = Sealer::new(work.path().join("store"));
    let load = sealer
        .command(&["load", "-i", "-"])
        .stdin(Stdio::from(skopeo.stdout.take().expect("skopeo's stdout")))
        .output()
        .expect("run load");
    let skopeo = skopeo.wait_with_output().expect("wait for skopeo");
    assert!(
        skopeo.status.success(),
        "{}",
        String::from_utf8_lossy(&skopeo.stderr)
    );
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    let config = sealer.inspect(&[SINGLE])["config"].clone();
    assert_eq!(config["architecture"], "amd64");
}
