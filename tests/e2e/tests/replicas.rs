//! Replicas of `sealer registry serve` over one S3 bucket (issue 13), each a real process on
//! loopback, the bucket on a real S3 server (moto), upstreams real docker-registry
//! instances, clients skopeo and plain HTTP:
//! pushes on one replica pull identically from the others (a chunked push whose PATCHes
//! alternate between replicas too), concurrent tag writes lose nothing, 32 cold GETs over
//! three replicas make one upstream GET, a fill survives the `kill -9` of its lease holder,
//! GC runs while pushes continue, a fresh replica needs no local state, and an S3 outage
//! gives clear 503s and heals by itself.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sealer_e2e::{Served, run_sealer};
use sealer_image_store::Digest;
use sealer_test_harness::{
    Fault, FaultProxy, ImageSpec, Moto, Registry, RegistryOptions, free_port, http_get,
    http_request, moto_server_path, require_moto, require_tools, run_ok, seed_image,
};

const HTTP: Duration = Duration::from_secs(60);
const SKOPEO: Duration = Duration::from_secs(120);
const PEER_SECRET: &str = "replicas-test-peer-secret-0123456789";
/// Short, so a dead holder's lease expires within the test.
const LEASE_TTL: &str = "2s";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn sha256(bytes: &[u8]) -> String {
    Digest::sha256(bytes).to_string()
}

/// Replicas over one bucket: their store roots, configuration files and logs in `dir`.
struct Cluster {
    dir: tempfile::TempDir,
    /// The S3 endpoint the replicas use (moto, or a fault proxy in front of it).
    endpoint: String,
    bucket: String,
    upstream: Option<String>,
    replicas: Vec<Served>,
}

impl Cluster {
    fn new(endpoint: String, bucket: &str, upstream: Option<String>) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            endpoint,
            bucket: bucket.to_owned(),
            upstream,
            replicas: Vec::new(),
        }
    }

    /// The configuration of a replica listening on `port`.
    fn config(&self, port: u16) -> String {
        let mut config = format!(
            "mode: read-write\n\
             storage:\n  s3:\n    bucket: {}\n    prefix: registry\n    endpoint: {}\n    allow_http: true\n    access_key_id: sealer-test\n    secret_access_key: sealer-test\n",
            self.bucket, self.endpoint
        );
        // Replicas that fill from an upstream share fills: one upstream GET per blob.
        if let Some(upstream) = &self.upstream {
            config.push_str(&format!(
                "cluster:\n  advertise_url: http://127.0.0.1:{port}\n  peer_secret: {PEER_SECRET}\n  lease_ttl: {LEASE_TTL}\n\
                 upstreams:\n  - name: up\n    url: {upstream}\n"
            ));
        }
        config
    }

    fn config_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("replica-{index}.yaml"))
    }

    /// Starts one more replica; returns its index.
    fn start_replica(&mut self) -> usize {
        let index = self.replicas.len();
        let port = free_port().unwrap();
        let config = self.config_path(index);
        std::fs::write(&config, self.config(port)).unwrap();
        // Each its own (empty) local root: nothing is shared but the bucket.
        let root = self.dir.path().join(format!("root-{index}"));
        let log = self.dir.path().join(format!("replica-{index}.log"));
        let served =
            Served::start_on(port, &root, &["--config", config.to_str().unwrap()], &log).unwrap();
        self.replicas.push(served);
        index
    }

    fn host(&self, index: usize) -> String {
        self.replicas[index].host()
    }

    fn url(&self, index: usize) -> String {
        format!("http://{}", self.host(index))
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(index, replica)| format!("--- replica {index}:\n{}", replica.log()))
            .collect()
    }
}

/// One test at a time: each runs a moto that serves one request at a time and up to four
/// replica processes, which on a small machine, several at once, time out each other's
/// storage requests.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A test's moto, held with the lock that runs the tests one after another.
struct SerialMoto {
    moto: Moto,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for SerialMoto {
    type Target = Moto;

    fn deref(&self) -> &Moto {
        &self.moto
    }
}

fn start_moto() -> Option<SerialMoto> {
    if !require_moto() {
        return None;
    }
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    Some(SerialMoto {
        moto: Moto::start().unwrap(),
        _turn: turn,
    })
}

fn skopeo_digest(host: &str, path: &str) -> String {
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/{path}"),
        ],
        SKOPEO,
    )
    .unwrap();
    sha256(&raw)
}

/// Pushes one blob monolithically (`POST ?digest=`); returns its digest.
fn push_blob(base: &str, repository: &str, bytes: &[u8]) -> String {
    try_push_blob(base, repository, bytes).unwrap_or_else(|error| panic!("{error}"))
}

/// Pushes `bytes` in one request; the answer's status and body when it is not 201.
fn try_push_blob(base: &str, repository: &str, bytes: &[u8]) -> Result<String, String> {
    let digest = sha256(bytes);
    let answer = http_request(
        "POST",
        &format!("{base}/v2/{repository}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
        HTTP,
    )
    .map_err(|error| format!("{error:#}"))?;
    if answer.status != 201 {
        return Err(format!(
            "{}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    Ok(digest)
}

/// An OCI image manifest naming `config` and `layers` (digest, size).
fn manifest(config: (&str, usize), layers: &[(&str, usize)], note: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(digest, size)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size
        })).collect::<Vec<_>>(),
        "annotations": {"note": note},
    }))
    .unwrap()
}

fn put_manifest(base: &str, repository: &str, reference: &str, bytes: &[u8]) -> u16 {
    http_request(
        "PUT",
        &format!("{base}/v2/{repository}/manifests/{reference}"),
        &[("Content-Type", OCI_MANIFEST)],
        bytes,
        HTTP,
    )
    .unwrap()
    .status
}

#[test]
fn a_push_to_one_replica_pulls_identically_from_the_others() {
    require_tools!("docker-registry", "skopeo");
    let Some(moto) = start_moto() else { return };
    let mut cluster = Cluster::new(moto.endpoint(), moto.bucket(), None);
    for _ in 0..3 {
        cluster.start_replica();
    }
    let spec = ImageSpec::new("unused:1", &[3_000, 700_000], 31);
    let image = seed_image(&cluster.host(0), "team/app:1", &spec, None)
        .unwrap_or_else(|error| panic!("{error:#}\n{}", cluster.logs()));
    for index in [1, 2] {
        assert_eq!(
            skopeo_digest(&cluster.host(index), "team/app:1"),
            image.manifest_digest,
            "replica {index}"
        );
        for blob in &image.platforms[0].blob_digests {
            let got = http_get(
                &format!("{}/v2/team/app/blobs/{blob}", cluster.url(index)),
                HTTP,
            )
            .unwrap();
            assert_eq!(got.status, 200);
            assert_eq!(&sha256(&got.body), blob);
        }
    }

    // A chunked push whose requests go to a different replica each time.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256(&data);
    let start = http_request(
        "POST",
        &format!("{}/v2/team/chunked/blobs/uploads/", cluster.url(0)),
        &[],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(start.status, 202);
    let mut location = start.header("Location").unwrap().to_owned();
    let chunks: Vec<&[u8]> = data.chunks(1_100_000).collect();
    for (number, chunk) in chunks.iter().enumerate() {
        let offset: usize = chunks[..number].iter().map(|chunk| chunk.len()).sum();
        let replica = (number + 1) % 3;
        let url = if location.starts_with("http") {
            location.clone()
        } else {
            format!("{}{location}", cluster.url(replica))
        };
        let range = format!("{offset}-{}", offset + chunk.len() - 1);
        let answer = http_request(
            "PATCH",
            &url,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range),
            ],
            chunk,
            HTTP,
        )
        .unwrap();
        assert_eq!(
            answer.status,
            202,
            "PATCH {number} on replica {replica}: {}\n{}",
            String::from_utf8_lossy(&answer.body),
            cluster.logs()
        );
        location = answer.header("Location").unwrap().to_owned();
    }
    let path = location.trim_start_matches(&cluster.url(0)).to_owned();
    let separator = if path.contains('?') { '&' } else { '?' };
    let done = http_request(
        "PUT",
        &format!("{}{path}{separator}digest={digest}", cluster.url(0)),
        &[],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(done.status, 201, "{}", String::from_utf8_lossy(&done.body));
    let got = http_get(
        &format!("{}/v2/team/chunked/blobs/{digest}", cluster.url(1)),
        HTTP,
    )
    .unwrap();
    assert_eq!(sha256(&got.body), digest);

    // A replica started now, with an empty local root, serves everything at once.
    let fresh = cluster.start_replica();
    assert_eq!(
        skopeo_digest(&cluster.host(fresh), "team/app:1"),
        image.manifest_digest
    );
}

#[test]
fn two_replicas_pushing_tags_into_one_repository_lose_none() {
    let Some(moto) = start_moto() else { return };
    let mut cluster = Cluster::new(moto.endpoint(), moto.bucket(), None);
    for _ in 0..3 {
        cluster.start_replica();
    }
    let config = push_blob(&cluster.url(0), "team/tags", b"{}");
    let layer_bytes = vec![5u8; 4096];
    let layer = push_blob(&cluster.url(1), "team/tags", &layer_bytes);
    let bytes = Arc::new(manifest(
        (&config, 2),
        &[(&layer, layer_bytes.len())],
        "tags",
    ));
    const PER_REPLICA: usize = 50;
    let writers: Vec<_> = [(0usize, 'a'), (1, 'b')]
        .into_iter()
        .map(|(replica, letter)| {
            let base = cluster.url(replica);
            let bytes = Arc::clone(&bytes);
            std::thread::spawn(move || {
                for number in 0..PER_REPLICA {
                    let status =
                        put_manifest(&base, "team/tags", &format!("{letter}-{number:03}"), &bytes);
                    assert_eq!(status, 201, "{letter}-{number:03}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let listed = http_get(&format!("{}/v2/team/tags/tags/list", cluster.url(2)), HTTP).unwrap();
    assert_eq!(listed.status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    let tags: Vec<String> = listed["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tag| tag.as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> = ['a', 'b']
        .iter()
        .flat_map(|letter| (0..PER_REPLICA).map(move |number| format!("{letter}-{number:03}")))
        .collect();
    expected.sort();
    assert_eq!(tags, expected);
}

#[test]
fn cold_gets_spread_over_three_replicas_make_one_upstream_get() {
    require_tools!("docker-registry", "skopeo");
    let Some(moto) = start_moto() else { return };
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let spec = ImageSpec::new("unused:1", &[8 << 20], 41);
    let image = seed_image(&upstream.host(), "team/big:1", &spec, None).unwrap();
    let layer = image.platforms[0].blob_digests[1].clone();
    let mut cluster = Cluster::new(moto.endpoint(), moto.bucket(), Some(upstream.url()));
    for _ in 0..3 {
        cluster.start_replica();
    }
    let urls: Vec<String> = (0..3)
        .map(|index| format!("{}/v2/up/team/big/blobs/{layer}", cluster.url(index)))
        .collect();
    let clients: Vec<_> = (0..32)
        .map(|client| {
            let url = urls[client % 3].clone();
            std::thread::spawn(move || http_get(&url, HTTP).unwrap())
        })
        .collect();
    for client in clients {
        let got = client.join().unwrap();
        assert_eq!(got.status, 200);
        assert!(got.complete);
        assert_eq!(sha256(&got.body), layer);
    }
    assert_eq!(
        upstream.blob_gets(Some(&layer)),
        1,
        "one upstream GET for the cluster\n{}",
        cluster.logs()
    );
}

#[test]
fn a_fill_survives_the_death_of_its_lease_holder() {
    require_tools!("docker-registry", "skopeo");
    let Some(moto) = start_moto() else { return };
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let spec = ImageSpec::new("unused:1", &[6 << 20], 51);
    let image = seed_image(&upstream.host(), "team/killed:1", &spec, None).unwrap();
    let layer = image.platforms[0].blob_digests[1].clone();
    // The upstream stalls after 1 MiB of the layer: the holder is mid-fill when it dies.
    let stall =
        FaultProxy::in_front_of(&upstream.host(), Fault::stall_after(&layer, 1 << 20)).unwrap();
    let mut cluster = Cluster::new(moto.endpoint(), moto.bucket(), Some(stall.url()));
    cluster.start_replica();
    cluster.start_replica();
    let first = format!("{}/v2/up/team/killed/blobs/{layer}", cluster.url(0));
    let holder_client = std::thread::spawn(move || http_get(&first, Duration::from_secs(20)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while stall.faults_applied() == 0 {
        assert!(Instant::now() < deadline, "the fill never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    cluster.replicas[0].kill();
    // Its client sees a cut transfer, never wrong bytes.
    if let Ok(answer) = holder_client.join().unwrap() {
        assert!(
            !answer.complete || sha256(&answer.body) == layer,
            "the dead holder's client got wrong bytes"
        );
    }
    stall.set_fault(Fault::None);
    // A retried pull on the other replica completes (after the lease expires).
    let second = format!("{}/v2/up/team/killed/blobs/{layer}", cluster.url(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http_get(&second, Duration::from_secs(20));
        if let Ok(answer) = &answer
            && answer.status == 200
            && answer.complete
        {
            assert_eq!(sha256(&answer.body), layer);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica completed the fill: {:?}\n{}",
            answer.map(|a| a.status),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_blobs_match_their_keys(&moto);
}

/// Every object under the blobs prefix hashes to the digest its key names: read with boto3
/// (signed requests; moto refuses anonymous reads) from moto's own virtual environment.
fn assert_blobs_match_their_keys(moto: &Moto) {
    const CHECK: &str = r#"
import hashlib, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="sealer-test", aws_secret_access_key="sealer-test")
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=sys.argv[2], Prefix="registry/blobs/") for o in page.get("Contents", [])]
assert keys, "no blob objects"
for key in keys:
    algorithm, hex_digest = key.split("/")[-2:]
    body = s3.get_object(Bucket=sys.argv[2], Key=key)["Body"].read()
    actual = hashlib.new(algorithm, body).hexdigest()
    assert actual == hex_digest, f"{key}: {len(body)} bytes hash to {actual}"
print(len(keys))
"#;
    let python = moto_server_path().with_file_name("python");
    let out = run_ok(
        python.to_str().unwrap(),
        &["-c", CHECK, &moto.endpoint(), moto.bucket()],
        HTTP,
    )
    .unwrap();
    let checked: usize = String::from_utf8_lossy(&out).trim().parse().unwrap();
    assert!(checked > 0);
}

/// `registry gc` with no grace, three runs while two replicas push: every blob a tag
/// references survives (the claims), every push lands (uploads in progress are not purged:
/// `--upload-idle` keeps its default), and the garbage goes.
#[test]
fn gc_while_other_replicas_push_deletes_nothing_referenced() {
    let Some(moto) = start_moto() else { return };
    let mut cluster = Cluster::new(moto.endpoint(), moto.bucket(), None);
    cluster.start_replica();
    cluster.start_replica();
    // An image whose manifest is deleted: its layer becomes garbage.
    let config = push_blob(&cluster.url(0), "team/gc", b"{}");
    let garbage_bytes = vec![9u8; 10_000];
    let garbage = push_blob(&cluster.url(0), "team/gc", &garbage_bytes);
    let doomed = manifest((&config, 2), &[(&garbage, garbage_bytes.len())], "doomed");
    assert_eq!(
        put_manifest(&cluster.url(0), "team/gc", "doomed", &doomed),
        201
    );
    let deleted = http_request(
        "DELETE",
        &format!(
            "{}/v2/team/gc/manifests/{}",
            cluster.url(0),
            sha256(&doomed)
        ),
        &[],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(deleted.status, 202);

    // Pushes continue on both replicas while GC runs.
    let pushers: Vec<_> = (0..2)
        .map(|replica| {
            let base = cluster.url(replica);
            let config = config.clone();
            std::thread::spawn(move || {
                let mut pushed = Vec::new();
                for number in 0..20u32 {
                    let bytes: Vec<u8> = format!("layer {replica} {number}").into_bytes();
                    let layer = try_push_blob(&base, "team/gc", &bytes)
                        .map_err(|error| format!("replica {replica}, layer {number}: {error}"))?;
                    let tag = format!("r{replica}-{number:02}");
                    let body = manifest((&config, 2), &[(&layer, bytes.len())], &tag);
                    let status = put_manifest(&base, "team/gc", &tag, &body);
                    if status != 201 {
                        return Err(format!("replica {replica}, manifest {tag}: {status}"));
                    }
                    pushed.push((tag, layer));
                }
                Ok::<_, String>(pushed)
            })
        })
        .collect();
    let config_file = cluster.config_path(0);
    let root = cluster.dir.path().join("gc-root");
    for _ in 0..3 {
        run_sealer(
            &root,
            &[
                "registry",
                "gc",
                "--config",
                config_file.to_str().unwrap(),
                "--grace",
                "0s",
                "--claim-wait",
                "1s",
            ],
        )
        .unwrap();
    }
    let pushed: Vec<(String, String)> = pushers
        .into_iter()
        .flat_map(|pusher| {
            pusher
                .join()
                .unwrap()
                .unwrap_or_else(|error| panic!("{error}\n{}", cluster.logs()))
        })
        .collect();
    assert_eq!(pushed.len(), 40);
    for (tag, layer) in &pushed {
        for base in [cluster.url(0), cluster.url(1)] {
            let manifest = http_request(
                "GET",
                &format!("{base}/v2/team/gc/manifests/{tag}"),
                &[("Accept", OCI_MANIFEST)],
                &[],
                HTTP,
            )
            .unwrap();
            assert_eq!(manifest.status, 200, "{tag}");
            for blob in [&config, layer] {
                let got = http_get(&format!("{base}/v2/team/gc/blobs/{blob}"), HTTP).unwrap();
                assert_eq!(got.status, 200, "{tag}: {blob} deleted while referenced");
            }
        }
    }
    // The garbage went.
    let gone = http_get(
        &format!("{}/v2/team/gc/blobs/{garbage}", cluster.url(1)),
        HTTP,
    )
    .unwrap();
    assert_eq!(gone.status, 404);
}

#[test]
fn an_s3_outage_answers_503_and_heals_by_itself() {
    require_tools!("docker-registry", "skopeo");
    let Some(moto) = start_moto() else { return };
    let s3 = FaultProxy::in_front_of(moto.endpoint().trim_start_matches("http://"), Fault::None)
        .unwrap();
    let mut cluster = Cluster::new(s3.url(), moto.bucket(), None);
    cluster.start_replica();
    let spec = ImageSpec::new("unused:1", &[2_000, 50_000], 61);
    let image = seed_image(&cluster.host(0), "team/outage:1", &spec, None).unwrap();
    let manifest_url = format!("{}/v2/team/outage/manifests/1", cluster.url(0));
    s3.set_fault(Fault::refuse(""));
    let started = Instant::now();
    let down = http_request("GET", &manifest_url, &[("Accept", OCI_MANIFEST)], &[], HTTP).unwrap();
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    assert!(
        String::from_utf8_lossy(&down.body).contains("storage"),
        "{}",
        String::from_utf8_lossy(&down.body)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    s3.set_fault(Fault::None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up =
            http_request("GET", &manifest_url, &[("Accept", OCI_MANIFEST)], &[], HTTP).unwrap();
        if up.status == 200 {
            assert_eq!(sha256(&up.body), image.manifest_digest);
            break;
        }
        assert!(Instant::now() < deadline, "never healed: {}", up.status);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_blobs_match_their_keys(&moto);
}
