//! Running a test over either backend: the local store (each server its own directory) or
//! one bucket on a fresh moto shared by every server the test starts.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use sealer_registry_proxy::bucket::BucketConfig;
use sealer_test_harness::{Moto, http_get, require_moto};
use serde_json::json;

/// The storage of a test's servers: the bucket of [`over_s3`], else `None` (a new local store
/// per server).
#[derive(Clone)]
pub struct S3Storage {
    /// The `storage: { s3: … }` of every server.
    pub config: BucketConfig,
    /// moto's endpoint.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
}

thread_local! {
    static S3: std::cell::RefCell<Option<S3Storage>> = const { std::cell::RefCell::new(None) };
}

/// The bucket this test's servers use, if it runs over S3.
pub fn s3_storage() -> Option<S3Storage> {
    S3.with(|s3| s3.borrow().clone())
}

/// Whether this test's servers use a bucket (checks of the local store's files are skipped
/// there: the bucket has no `uploads/` directory, `index.json` or fsck).
pub fn on_bucket() -> bool {
    s3_storage().is_some()
}

/// The `storage: { s3: … }` keys of `moto`'s bucket, under the prefix `registry`.
pub fn bucket_keys_of(moto: &Moto) -> serde_json::Value {
    json!({
        "bucket": moto.bucket(),
        "prefix": "registry",
        "endpoint": moto.endpoint(),
        "region": "us-east-1",
        "allow_http": true,
        "access_key_id": "sealer-test",
        "secret_access_key": "sealer-test",
    })
}

/// [`bucket_keys_of`] as a configuration.
pub fn bucket_config(moto: &Moto) -> BucketConfig {
    serde_json::from_value(bucket_keys_of(moto)).unwrap()
}

/// Runs `test` with every server it starts over one bucket of a fresh moto (the same
/// configuration for each: a restarted server, or a second one, shares the first one's
/// content); skipped when moto is not installed.
pub fn over_s3(test: fn()) {
    if !require_moto() {
        return;
    }
    let moto = Moto::start().expect("moto_server starts");
    let config = bucket_config(&moto);
    S3.with(|s3| {
        *s3.borrow_mut() = Some(S3Storage {
            config,
            endpoint: moto.endpoint(),
            bucket: moto.bucket().to_owned(),
        })
    });
    test();
    S3.with(|s3| *s3.borrow_mut() = None);
}

/// Instantiates each test fn for both backends: `<test>::local` over a local store,
/// `<test>::s3` over a bucket on moto ([`over_s3`]).
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn local() {
                super::$test()
            }

            #[test]
            fn s3() {
                $crate::backends::over_s3(super::$test)
            }
        }
    )*};
}

/// Keys of the test's bucket under `prefix` (moto answers unsigned listings).
pub fn bucket_keys(s3: &S3Storage, prefix: &str) -> String {
    let url = format!(
        "{}/{}?list-type=2&prefix=registry/{prefix}",
        s3.endpoint, s3.bucket
    );
    let response = http_get(&url, Duration::from_secs(10)).unwrap();
    assert_eq!(response.status, 200, "{url}");
    String::from_utf8(response.body).unwrap()
}

/// moto with a bucket, or `None` when moto_server is not installed (the test is skipped).
pub fn moto() -> Option<Moto> {
    if !require_moto() {
        return None;
    }
    Some(Moto::start().expect("moto_server starts"))
}

/// A replica's view of `moto`'s bucket: its own S3 client.
pub fn replica(moto: &Moto) -> sealer_registry_proxy::bucket::Bucket {
    sealer_registry_proxy::bucket::Bucket::open(&bucket_config(moto)).unwrap()
}

/// A runtime for the bucket's async API, with threads enough for racing replicas.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}
