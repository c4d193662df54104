//! pull, push, login and logout against real docker-registry instances (started by
//! sealer-test-harness on loopback ports), read back with skopeo.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sealer_image_store::Platform;
use sealer_test_harness::{
    ImageSpec, Registry, RegistryOptions, require_tools, run_bounded, seed_image,
};
use sha2::{Digest as _, Sha256};

use crate::support::*;

/// `sealer ARGS…` with `home` as HOME (so `~/.docker/config.json` is the test's own).
fn sealer_at_home(sealer: &Sealer, home: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut command = sealer.command(args);
    command
        .env("HOME", home)
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run sealer");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for sealer")
}

fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn skopeo_digest(image: &str, creds: &str) -> String {
    let mut command = Command::new("skopeo");
    command
        .args(["inspect", "--tls-verify=false", "--raw", "--creds", creds])
        .arg(format!("docker://{image}"));
    let output = run_bounded(&mut command, Duration::from_secs(120)).expect("skopeo");
    assert!(output.status.success(), "{output:?}");
    format!("sha256:{}", hex::encode(Sha256::digest(&output.stdout)))
}

#[test]
fn pull_from_one_registry_push_to_another_with_saved_login() {
    require_tools!("docker-registry", "skopeo");
    let a = Registry::start(RegistryOptions::anonymous()).expect("registry A");
    let b = Registry::start(RegistryOptions::htpasswd("erin", "pw")).expect("registry B");
    let mut spec = ImageSpec::new("unused:1", &[4096, 300_000], 81);
    spec.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ];
    let seeded = seed_image(&a.host(), "team/cluster:v1", &spec, None).expect("seed");
    let work = temp();
    let home = work.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let sealer = Sealer::new(work.path().join("store"));
    let source = format!("{}/team/cluster:v1", a.host());
    let destination = format!("{}/mirror/cluster:v1", b.host());

    // Login: refused with a wrong password, saved with the right one.
    let refused = sealer_at_home(
        &sealer,
        &home,
        &["login", "-u", "erin", "--password-stdin", &b.host()],
        "nope\n",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(!home.join(".docker/config.json").exists());
    let out = ok(
        sealer_at_home(
            &sealer,
            &home,
            &["login", "-u", "erin", "--password-stdin", &b.host()],
            "pw\n",
        ),
        "login",
    );
    assert!(out.contains("Login succeeded"), "{out}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.join(".docker/config.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let out = ok(
        sealer_at_home(&sealer, &home, &["pull", "--all-platforms", &source], ""),
        "pull",
    );
    assert!(out.contains(&seeded.manifest_digest), "{out}");
    assert_eq!(sealer.digest_of(&source), seeded.manifest_digest);

    // Push with the credentials from ~/.docker/config.json, no flags.
    let out = ok(
        sealer_at_home(&sealer, &home, &["push", &source, &destination], ""),
        "push",
    );
    assert!(out.contains(&seeded.manifest_digest), "{out}");
    assert_eq!(
        skopeo_digest(&destination, "erin:pw"),
        seeded.manifest_digest
    );

    // After logout the registry refuses, and sealer says how to fix it.
    ok(
        sealer_at_home(&sealer, &home, &["logout", &b.host()], ""),
        "logout",
    );
    let failed = sealer_at_home(&sealer, &home, &["push", &source, &destination], "");
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("sealer login"), "{stderr}");

    // A single platform of a multi-arch image: the index is kept.
    let single = Sealer::new(work.path().join("single"));
    let out = ok(
        sealer_at_home(
            &single,
            &home,
            &["pull", "--platform", "linux/arm64", "--quiet", &source],
            "",
        ),
        "pull one platform",
    );
    assert!(out.contains("linux/arm64"), "{out}");
    assert_eq!(single.digest_of(&source), seeded.manifest_digest);
}

/// `sealer login -u USER HOST` on a terminal (a pty made by `script`) asks for the password
/// with echo off; without a terminal and without `--password-stdin` it says what to do.
#[test]
fn login_prompts_for_the_password_on_a_terminal() {
    require_tools!("docker-registry", "script");
    const PASSWORD: &str = "s3cret-Pw-42";
    let registry = Registry::start(RegistryOptions::htpasswd("erin", PASSWORD)).expect("registry");
    let work = temp();
    let home = work.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let sealer = Sealer::new(work.path().join("store"));

    let piped = sealer_at_home(
        &sealer,
        &home,
        &["login", "-u", "erin", &registry.host()],
        "",
    );
    assert_eq!(piped.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(stderr.contains("--password-stdin"), "{stderr}");

    let line = format!(
        "'{}' --root '{}' login -u erin {}",
        env!("CARGO_BIN_EXE_sealer"),
        sealer.root.display(),
        registry.host()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env("HOME", &home)
        .env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = std::io::Read::read(&mut stdout, &mut buffer) {
                if read == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    // Typed only once asked: what a person at the terminal does.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !text().contains("Password:") {
        assert!(
            std::time::Instant::now() < deadline,
            "no prompt: {}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("type the password");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("poll script").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "login hangs: {}",
            text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    reader.join().expect("reader");
    let shown = text();
    assert!(child.wait().expect("wait").success(), "{shown}");
    assert!(shown.contains("Login succeeded"), "{shown}");
    assert!(
        !shown.contains(PASSWORD),
        "the password was echoed: {shown}"
    );
    assert!(home.join(".docker/config.json").exists());
}
