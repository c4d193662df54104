//! Synthetic images for tests, examples and benchmarks (feature `test-support`).
//!
//! Layers are real gzip-wrapped tars holding one file of pseudo-random bytes, generated
//! while streaming into the store, so images of any size cost no memory.

use std::io::{self, Chain, Cursor, Read};

use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Result, StoreError};
use crate::model::{Descriptor, Index, Manifest, Platform, media_type};
use crate::reference::Reference;
use crate::store::Store;

/// A deterministic pseudo-random byte stream of a fixed length (xorshift64*).
#[derive(Debug, Clone)]
pub struct RandomBytes {
    state: u64,
    remaining: u64,
}

impl RandomBytes {
    /// `len` bytes from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            remaining: len,
        }
    }
}

impl Read for RandomBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        for chunk in buf[..len].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.remaining -= len as u64;
        Ok(len)
    }
}

/// Hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

type TarStream = Chain<Chain<Cursor<Vec<u8>>, RandomBytes>, Cursor<Vec<u8>>>;

/// An uncompressed tar holding one file `name` of `size` random bytes.
fn tar_stream(name: &str, size: u64, seed: u64) -> io::Result<TarStream> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let padding = (512 - size % 512) % 512;
    let trailer = vec![0u8; padding as usize + 1024];
    Ok(Cursor::new(header.as_bytes().to_vec())
        .chain(RandomBytes::new(seed, size))
        .chain(Cursor::new(trailer)))
}

/// What [`write_image`] builds.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The name to tag (`None`: left untagged).
    pub name: Option<String>,
    /// One image per platform; more than one makes an OCI index.
    pub platforms: Vec<Platform>,
    /// Sizes of the random file in each layer.
    pub layer_sizes: Vec<u64>,
    /// Seed: the same spec and seed give the same digests.
    pub seed: u64,
    /// Gzip level (0 = stored, fastest).
    pub gzip_level: u32,
}

impl ImageSpec {
    /// A single-platform (linux/amd64) image.
    pub fn new(name: &str, layer_sizes: &[u64], seed: u64) -> Self {
        Self {
            name: Some(name.to_owned()),
            platforms: vec![Platform::new("linux", "amd64", None)],
            layer_sizes: layer_sizes.to_vec(),
            seed,
            gzip_level: 1,
        }
    }
}

/// Builds the image of `spec` in `store` (one all-or-nothing import) and returns the
/// descriptor of its top manifest or index.
pub fn write_image(store: &Store, spec: &ImageSpec) -> Result<Descriptor> {
    let ingest = store.begin_ingest()?;
    let mut platform_manifests = Vec::new();
    for (platform_number, platform) in spec.platforms.iter().enumerate() {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (layer_number, size) in spec.layer_sizes.iter().enumerate() {
            // Shared base: layer 0 is the same on every platform, the rest differ.
            let seed = if layer_number == 0 {
                spec.seed
            } else {
                spec.seed ^ ((platform_number as u64 + 1) << 32) ^ layer_number as u64
            };
            let tar = tar_stream(&format!("data-{layer_number}"), *size, seed)
                .map_err(|error| StoreError::io("building a test layer", error))?;
            let mut hashing = HashingReader {
                inner: tar,
                hasher: Hasher::new(Algorithm::Sha256),
            };
            let mut gzip = flate2::read::GzEncoder::new(
                &mut hashing,
                flate2::Compression::new(spec.gzip_level),
            );
            let (digest, compressed) =
                ingest.put_unknown(Algorithm::Sha256, &mut gzip, "test layer")?;
            drop(gzip);
            diff_ids.push(hashing.hasher.finish());
            layers.push(Descriptor::new(
                media_type::OCI_LAYER_GZIP,
                digest,
                compressed,
            ));
        }
        let config = serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "variant": platform.variant,
            "config": {"Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(Digest::to_string).collect::<Vec<_>>()},
            "history": [],
        });
        let config_bytes = serde_json::to_vec(&config)
            .map_err(|error| StoreError::io("encoding a config", error.into()))?;
        let config_digest = ingest.put_bytes(&config_bytes)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config: Descriptor::new(
                media_type::OCI_CONFIG,
                config_digest,
                config_bytes.len() as u64,
            ),
            layers,
            subject: None,
            annotations: Default::default(),
            extra: Default::default(),
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|error| StoreError::io("encoding a manifest", error.into()))?;
        let digest = ingest.put_bytes(&bytes)?;
        let mut descriptor = Descriptor::new(media_type::OCI_MANIFEST, digest, bytes.len() as u64);
        descriptor.platform = Some(platform.clone());
        platform_manifests.push(descriptor);
    }
    let top = if platform_manifests.len() == 1 {
        let mut only = platform_manifests.remove(0);
        only.platform = None;
        only
    } else {
        let mut index = Index::empty();
        index.manifests = platform_manifests;
        let bytes = serde_json::to_vec(&index)
            .map_err(|error| StoreError::io("encoding an index", error.into()))?;
        let digest = ingest.put_bytes(&bytes)?;
        Descriptor::new(media_type::OCI_INDEX, digest, bytes.len() as u64)
    };
    let name = spec
        .name
        .as_deref()
        .map(str::parse::<Reference>)
        .transpose()?;
    ingest.commit(&[(name, top.clone())])?;
    Ok(top)
}
