//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use sealer_registry_proxy::config::ConfigDuration;

/// sealer: build, store, share and serve cluster images.
#[derive(Debug, Parser)]
#[command(name = "sealer", version, about, propagate_version = true)]
pub struct Cli {
    /// The image store (an OCI image layout). Default: $XDG_DATA_HOME/sealer or
    /// ~/.local/share/sealer.
    #[arg(long, global = true, env = "SEALER_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace). `RUST_LOG` overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// How log lines on stderr are written: text, or json (one object per line, for log
    /// collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL message key=value…`.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the fields.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a cluster image from a Kubefile and a build context.
    Build(BuildArgs),
    /// List the images in the store.
    Images(ImagesArgs),
    /// Give an image another name.
    Tag(TagArgs),
    /// Remove image names (the content stays until `sealer prune`).
    Rmi(RmiArgs),
    /// Show an image's manifest and config as JSON.
    Inspect(InspectArgs),
    /// Write images to an archive file.
    Save(SaveArgs),
    /// Read images from an archive file or an OCI layout directory.
    Load(LoadArgs),
    /// Remove content no image refers to, and leftovers of interrupted writes.
    Prune(PruneArgs),
    /// Re-hash every blob (a corrupt one is moved to quarantine/, so that the next load or
    /// pull fetches it again) and check that every image is complete.
    Fsck,
    /// Download an image from a registry into the store.
    Pull(PullArgs),
    /// Upload an image from the store to a registry.
    Push(PushArgs),
    /// Check credentials against a registry and save them in docker's config.json.
    Login(LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(LogoutArgs),
    /// List the container images a cluster image's tree (or one file) needs, with the file,
    /// line and rule asking for each.
    #[command(long_about = SCAN_ABOUT)]
    Scan(ScanArgs),
    /// Run an OCI registry over the store.
    Registry {
        /// What to do.
        #[command(subcommand)]
        command: RegistryCommand,
    },
}

/// `sealer registry …`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Serve the store as an OCI distribution registry until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Print the configuration `registry serve` uses without --config: every key with its
    /// default, commented (`sealer registry config > registry.yaml` to start one).
    Config,
    /// Write the containerd, CRI-O/podman or Docker files that make a node pull the
    /// registry's upstreams through it.
    MirrorConfig(MirrorConfigArgs),
    /// Delete the blobs of the registry's bucket (`storage: { s3 }`) that no tag or manifest
    /// references, while replicas keep serving and pushing: nothing a push in flight needs
    /// is deleted (claims by compare-and-swap, cleared by any write that references the
    /// blob). A local store is collected by `sealer prune`.
    Gc(GcArgs),
}

/// `sealer registry gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The registry's configuration (its `storage: { s3: … }`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Keep unreferenced blobs younger than this (a push's blobs before its manifest).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub grace: ConfigDuration,
    /// Purge upload sessions idle this long (their clients must start again).
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub upload_idle: ConfigDuration,
    /// How long claims stand before the blobs are checked again and deleted: longer than
    /// any request may take.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub claim_wait: ConfigDuration,
    /// Only count what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

/// `sealer registry serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The server configuration (YAML or TOML; `sealer registry config` prints every key).
    /// Its `storage` defaults to the store of --root. Without it: the defaults, so the
    /// store of --root read-only, no upstreams (offline), on 127.0.0.1:5000.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve the images this cluster image (in the store) carries in its registry/ layer,
    /// by `?ns=HOST` and by path prefix (`/v2/HOST/REPOSITORY/…`); repeatable. With
    /// upstreams in --config, what is missing is proxied; without, nothing leaves the host.
    #[arg(long = "image", value_name = "CLUSTER_IMAGE")]
    pub images: Vec<String>,
    /// The address to listen on (overrides the configuration's `listen`; default
    /// 127.0.0.1:5000).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

/// The container runtimes `sealer registry mirror-config` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MirrorRuntime {
    /// containerd: `certs.d/<upstream>/hosts.toml` (the upstream travels as `?ns=`).
    Containerd,
    /// CRI-O, podman, skopeo, buildah: a registries.conf.d drop-in (the upstream travels as
    /// a path prefix).
    Crio,
    /// Docker Engine: daemon.json (Docker Hub only; other upstreams by prefix names).
    Docker,
}

/// `sealer registry mirror-config`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("upstream_source")
        .required(true)
        .multiple(true)
        .args(["config", "upstreams", "images"])
))]
pub struct MirrorConfigArgs {
    /// The runtime to configure.
    #[arg(long, value_enum)]
    pub runtime: MirrorRuntime,
    /// Where nodes reach the registry (`http://10.0.0.2:5000`, `https://mirror.example.com`).
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// The registry's configuration (as for `registry serve`): its upstreams are mirrored.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// An upstream to mirror besides those of --config (`quay.io`, `https://ghcr.io`,
    /// `http://10.0.0.5:5000`; repeatable).
    #[arg(long = "upstream", value_name = "HOST|URL")]
    pub upstreams: Vec<String>,
    /// Mirror every registry whose images this cluster image (in the store of --root)
    /// carries, as `registry serve --image` serves them (repeatable).
    #[arg(long = "image", value_name = "CLUSTER_IMAGE")]
    pub images: Vec<String>,
    /// Write the files under this directory (`/etc/containerd`, `/etc/containers`,
    /// `/etc/docker`) instead of printing them.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Replace existing files whose content differs (refused otherwise).
    #[arg(long, requires = "output")]
    pub force: bool,
}

/// `sealer prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Keep unreferenced blobs that `sealer registry serve` received this recently (an
    /// uploaded layer whose manifest is still to come, a mounted or cached blob): 500ms,
    /// 30s, 5m, 1h, or seconds; 0 keeps none. Blobs the CLI pulled or loaded are never
    /// held, so they go at once.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub keep_fresh: ConfigDuration,
}

/// Options shared by the commands that talk to registries.
#[derive(Debug, Default, clap::Args)]
pub struct RegistryArgs {
    /// Allow plain HTTP to this image's registry when HTTPS fails (loopback registries
    /// always may). TLS, when used, is still verified.
    #[arg(long)]
    pub insecure: bool,
    /// A PEM file of CA certificates to trust besides the system's (repeatable).
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_files: Vec<PathBuf>,
}

/// Options of the commands that transfer blobs.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `sealer pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// The image (`registry/repository[:tag][@digest]`; `nginx` means
    /// `docker.io/library/nginx:latest`).
    #[arg(value_name = "REF")]
    pub image: String,
    /// The platform to fetch of a multi-arch image (default: this machine's). The index is
    /// kept, so the image keeps its multi-arch digest.
    #[arg(
        long,
        value_name = "OS/ARCH[/VARIANT]",
        conflicts_with = "all_platforms"
    )]
    pub platform: Option<String>,
    /// Fetch every platform of a multi-arch image.
    #[arg(long)]
    pub all_platforms: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// `sealer push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The image in the store: a name, a digest or a short id.
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Where to push it (`registry/repository:tag`); default: the image's own name.
    #[arg(value_name = "DEST")]
    pub destination: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// `sealer login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry host (`quay.io`, `localhost:5000`, `docker.io`).
    #[arg(value_name = "HOST")]
    pub host: String,
    /// The user name (asked for on a terminal when not given).
    #[arg(short, long)]
    pub username: Option<String>,
    /// Read the password from standard input. Without it the password is asked for on the
    /// terminal, not echoed.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// `sealer logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry host.
    #[arg(value_name = "HOST")]
    pub host: String,
}

/// `sealer images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Only this repository (`nginx`, `quay.io/a/b`), or one tag of it (`nginx:1.25`).
    #[arg(value_name = "REPOSITORY[:TAG]")]
    pub repository: Option<String>,
    /// Print only the image ids (short digests; full ones with --digests), once each.
    #[arg(short, long, conflicts_with_all = ["json", "format"])]
    pub quiet: bool,
    /// Print JSON instead of a table (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// `table` (the default), `json`, or a template such as
    /// `'{{.Repository}}:{{.Tag}}\t{{.ID}}'` (`table TEMPLATE` adds a header line). Fields:
    /// .Repository .Tag .Digest .ID .Platforms .Size .Kind (cluster, dependency, other);
    /// `\t` and `\n` are a tab and a newline.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
    /// Show full digests.
    #[arg(long)]
    pub digests: bool,
}

/// `sealer scan --help`: what is found, and by which rule.
const SCAN_ABOUT: &str = "\
List the container images a cluster image's tree (or one file) needs, with the file, line and
rule asking for each.

A build context (a directory with a Kubefile, or -f): what `sealer build` of it would pull
and carry, from the build's own steps (COPY/APP place files in the rootfs; a RUN step counts
only once a build cached its layer) and scan, each image marked \"in the store\" or \"to pull\".

What is scanned in a tree: a directory holding Chart.yaml is a Helm chart (values.yaml,
templates/, crds/, subcharts under charts/, also as .tgz). In a cluster tree: manifests/,
charts/, application/apps/ and the root's imageList; Kubernetes YAML or charts elsewhere are named in a
warning. A tree without these is scanned whole. Every document of a YAML file is parsed on its
own: a broken one (or an alias bomb) is a warning and the others are scanned. Image lists are
only files named imageList and --image-list files.

Rules (the name in parentheses, as in --json):
  pod-spec         image of containers, initContainers, ephemeralContainers and image volumes
                   of every workload kind's pod template
  image-field      any other image: string (custom resources, values)
  helm-values      {registry, repository, tag, digest} mappings of chart values (appVersion
                   for an absent tag, global.imageRegistry, a digest instead of the tag)
  template-values  a chart template's image: resolved from the chart's values
  template-line    image: lines of templates that are not YAML
  helm-template    charts rendered by helm (lines of helm's output for that template)
  image-list       lines of imageList files; extra-image-list: --image-list files
Runtime images, which controllers start by themselves (marked \"(runtime)\" when no other
rule found them, \"runtime\": true in --json):
  arg              container command/args: --flag=IMAGE, --flag IMAGE, words of scripts
  env              container env values (*_IMAGE, *_IMG names, or any full reference)
  configmap        ConfigMap data: keys ending in image, words of configuration text
  crd-field        fields named ...Image, ..._IMAGE, ...Img (besides image:)
A runtime value counts only as a valid image reference with a registry host or a tag/digest
when its name says image, with both otherwise (--image-pull-policy=Always is no image);
--ignored-image-list drops a false one. Templated images left unresolved are warnings.";

/// `sealer scan`.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// A build context (a directory with a Kubefile, or any with -f): the images
    /// `sealer build` of it would pull and carry, decided by the build's own steps (COPY,
    /// APP, a cached RUN) and rules. Else a tree (an unpacked cluster image root) or one
    /// file (a YAML manifest, a .tgz chart, an imageList).
    #[arg(value_name = "PATH")]
    pub dir: PathBuf,
    /// The Kubefile (default: PATH/Kubefile when there is one).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Scan PATH as a plain tree even when it holds a Kubefile.
    #[arg(long, conflicts_with = "file")]
    pub tree: bool,
    /// A build argument `KEY=VALUE` for the Kubefile's ARGs, as for `sealer build`.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Target platforms, comma separated, as for `sealer build` (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[,…]")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Add the images of this list (one per line, `#` comments).
    #[arg(long = "image-list", value_name = "FILE")]
    pub image_lists: Vec<PathBuf>,
    /// Leave out the images of this list (a name without tag leaves out all its tags).
    #[arg(long = "ignored-image-list", value_name = "FILE")]
    pub ignored_image_lists: Vec<PathBuf>,
    /// Do not render charts with `helm template` even when helm is on PATH.
    #[arg(long)]
    pub no_helm: bool,
}

/// `sealer tag`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image: a name, a digest or a short id.
    pub source: String,
    /// The new name (`registry/repository:tag`; `nginx` means `docker.io/library/nginx:latest`).
    pub target: String,
}

/// `sealer rmi`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Names (removes that name), digests or short ids (remove every name of that image).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `sealer build --build-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuildModeArg {
    /// Pull the images the cluster needs into a `registry/` layer.
    Full,
    /// No image pulls, no `registry/` layer.
    Lite,
}

/// Layer compressions of `sealer build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayerCompressionArg {
    /// `application/vnd.oci.image.layer.v1.tar+gzip`.
    Gzip,
    /// `application/vnd.oci.image.layer.v1.tar+zstd`.
    Zstd,
}

/// `sealer build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The Kubefile (default: CONTEXT/Kubefile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A name for the image (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// A build argument `KEY=VALUE` for the Kubefile's ARGs (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// An image label `KEY=VALUE` (repeatable; wins over LABEL).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A manifest annotation `KEY=VALUE` (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Target platforms, comma separated (`linux/amd64,linux/arm64`; default: this
    /// machine's). Several make a multi-arch image; RUN works only for this machine's.
    #[arg(long, value_name = "OS/ARCH[,…]")]
    pub platform: Option<String>,
    /// Build every layer again (the cache is still updated).
    #[arg(long)]
    pub no_cache: bool,
    /// Layer compression: gzip (read everywhere) or zstd (smaller, faster; containerd ≥ 1.5).
    #[arg(long, value_enum, default_value_t = LayerCompressionArg::Gzip)]
    pub compression: LayerCompressionArg,
    /// full: pull every image the rootfs needs (manifests/, charts/, application/apps/,
    /// imageList) and carry them in a `registry/` layer; lite: skip that.
    #[arg(long, value_enum, default_value_t = BuildModeArg::Full)]
    pub build_mode: BuildModeArg,
    /// A file of images to carry besides those found (one per line; repeatable), as for
    /// `sealer scan`.
    #[arg(long = "image-list", value_name = "FILE")]
    pub image_lists: Vec<PathBuf>,
    /// A file of images not to carry though found (one per line; repeatable): drops a false
    /// finding, e.g. a runtime image an operator never starts. An entry without tag or
    /// digest drops every tag of its repository.
    #[arg(long = "ignored-image-list", value_name = "FILE")]
    pub ignored_image_lists: Vec<PathBuf>,
    /// No spinner.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The build context: the directory COPY and APP sources are read from (they cannot
    /// leave it).
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// `sealer inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The image: a name, a digest or a short id.
    pub image: String,
    /// The platform to show of a multi-arch image (`os/arch[/variant]`; default: this
    /// machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print the stored manifest (or index) bytes exactly, nothing else.
    #[arg(long)]
    pub raw: bool,
}

/// Archive formats of `sealer save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A tar of an OCI image layout (multi-arch kept).
    OciArchive,
    /// `docker save`'s format (one platform per image).
    DockerArchive,
}

/// `sealer save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// The archive to write: a regular file is replaced atomically, only when the save
    /// succeeds (a symlink is followed); a device, FIFO or socket is written into; `-` is
    /// stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The archive format.
    #[arg(long, value_enum, default_value_t = Format::OciArchive)]
    pub format: Format,
    /// For docker-archive: the platform to export of multi-arch images (default: this
    /// machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// The images: names, digests or short ids.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `sealer load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// An oci-archive or docker-archive (gzip-compressed or not), or an OCI layout directory.
    /// `-` reads stdin; FIFOs, `/dev/stdin` and `<(…)` are read as streams.
    #[arg(short, long, value_name = "FILE")]
    pub input: PathBuf,
    /// The name to give the image when the input holds exactly one.
    #[arg(long, value_name = "REF")]
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
