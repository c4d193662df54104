//! Finds every container image a cluster needs in Kubernetes YAML, Helm charts, image lists
//! and application directories, with the file and line that asked for each.
//!
//! The scan is structural: every document of every YAML file is parsed on its own (a broken
//! document, or an alias bomb, is a warning and the others are scanned), streamed document by
//! document, into a tree whose scalars keep their source text (`tag: 1.20` is `1.20`, not the
//! number 1.2). Rules:
//!
//! * [`Rule::PodSpec`]: `image` of `containers`, `initContainers` and `ephemeralContainers`
//!   in the pod template of every workload kind (Pod, Deployment, StatefulSet, DaemonSet,
//!   ReplicaSet, Job, CronJob, ReplicationController, PodTemplate; `List` items too), and
//!   the `image.reference` of image volumes.
//! * [`Rule::ImageField`]: any other `image:` string anywhere (CRDs, operators, values);
//!   `image: ""` is a warning.
//! * [`Rule::HelmValues`]: `{registry, repository, tag, digest}` / `{repository, tag}` mappings
//!   (a lone `repository` under an `image` key); in a chart an absent or empty `tag` is the
//!   chart's `appVersion`, `global.imageRegistry` replaces the registry and a digest replaces
//!   the tag (as charts' image helpers do).
//! * [`Rule::TemplateValues`]: a chart template's `image:` resolved from the chart's values.
//! * [`Rule::TemplateLine`]: `image:` lines of templates that are not YAML; templated values
//!   (`{{`, `${`) that stay unresolved are warnings, never dropped silently.
//! * [`Rule::ImageList`]: image list files (one reference per line, `#` comments, blanks).
//! * [`Rule::HelmTemplate`]: with [`ScanOptions::helm`], charts rendered by `helm template`.
//! * Runtime images, which controllers start by themselves ([`Rule::is_runtime`],
//!   [`Finding::runtime`]): [`Rule::Arg`] (container `command`/`args`), [`Rule::Env`]
//!   (container `env` values), [`Rule::ConfigMap`] (ConfigMap `data`) and [`Rule::CrdField`]
//!   (`…Image` fields). A value counts only as a valid reference with a registry host or a
//!   tag/digest when its name says image, with both otherwise.
//!
//! What is scanned: a root holding `Chart.yaml` is a chart. Otherwise, below the root:
//! `manifests/` (`*.yaml`, `*.yml`, `*.json`, `*.tmpl`, `imageList`), `charts/`,
//! `application/apps/` (YAML, charts, `imageList`), and the root's `imageList`; Kubernetes YAML
//! and charts elsewhere are named in warnings. A root with none of these is scanned whole by
//! [`scan`]; [`scan_cluster_rootfs`] (what a build carries) scans only those areas.
//! A directory holding `Chart.yaml` is a Helm chart (its `values.yaml`, `templates/`, `crds/`
//! and subcharts under `charts/`, whose templates see the parent's values); `.tgz` charts are
//! read in memory. Only files named `imageList` are image lists. References are normalised
//! (`nginx` → `docker.io/library/nginx:latest`) and deduplicated, each keeping every place
//! that asked for it, sorted by file and line.
#![deny(missing_docs)]

mod rules;
mod template;
mod tree;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sealer_fs_abstraction::{Fs, FsError, error_chain};
use sealer_image_store::Reference;
use serde::Serialize;

pub use tree::{scan, scan_cluster_rootfs, scan_file};

/// What to scan besides the tree.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Image lists whose images are added (`--image-list`).
    pub image_lists: Vec<ImageListFile>,
    /// Image lists whose images are removed from the result (`--ignored-image-list`). An
    /// entry without tag or digest removes every tag of its repository.
    pub ignored_image_lists: Vec<ImageListFile>,
    /// The `helm` binary that renders the charts of the tree (`helm template`, default
    /// values) besides the static rules; when it cannot be started, charts are only scanned
    /// statically. `None`: never render. Needs an `Fs` whose display paths are real paths.
    pub helm: Option<PathBuf>,
}

/// An image list given from outside the scanned tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageListFile {
    /// How the file is named in provenance and warnings.
    pub name: String,
    /// Its content.
    pub text: String,
}

impl ImageListFile {
    /// Reads `path` from `fs`; the name is `fs`'s display path of it.
    pub fn read(fs: &dyn Fs, path: &Path) -> Result<Self, ScanError> {
        let name = fs.display_path(path).display().to_string();
        let data = fs.read(path)?;
        let text = String::from_utf8(data).map_err(|_| ScanError::NotUtf8 {
            path: fs.display_path(path),
        })?;
        Ok(Self { name, text })
    }
}

/// Why a scan failed (problems inside single files are [`Warning`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The tree could not be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// An image list given explicitly is not UTF-8.
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
}

/// The rule that found an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A container of a workload's pod template.
    PodSpec,
    /// An `image:` string elsewhere (CRDs, operators, values).
    ImageField,
    /// A Helm-values `{registry, repository, tag, digest}` mapping.
    HelmValues,
    /// An `image:` line of a template that is not YAML.
    TemplateLine,
    /// A line of an image list file in the tree.
    ImageList,
    /// A line of an image list given with `--image-list`.
    ExtraImageList,
    /// A chart rendered by `helm template` with its default values; the line is in the
    /// rendered output of the template named by the file.
    HelmTemplate,
    /// A chart template's `image:` whose `{{ .Values… }}` (and `.Chart.AppVersion`,
    /// `default`) were resolved from the chart's own values.yaml and Chart.yaml.
    TemplateValues,
    /// A runtime image: a word of a container's `command`/`args` (`--engine-image=…`,
    /// `--flag …`, a script's words).
    Arg,
    /// A runtime image: the value of a container's `env` variable.
    Env,
    /// A runtime image: a ConfigMap `data` value (keys ending in `image`, words of
    /// configuration text).
    #[serde(rename = "configmap")]
    ConfigMap,
    /// A runtime image: a field whose name ends in `Image`/`_IMAGE`/`Img` (custom resources,
    /// values), other than `image` itself.
    CrdField,
}

impl Rule {
    /// The rule's name, as in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PodSpec => "pod-spec",
            Self::ImageField => "image-field",
            Self::HelmValues => "helm-values",
            Self::TemplateLine => "template-line",
            Self::ImageList => "image-list",
            Self::ExtraImageList => "extra-image-list",
            Self::HelmTemplate => "helm-template",
            Self::TemplateValues => "template-values",
            Self::Arg => "arg",
            Self::Env => "env",
            Self::ConfigMap => "configmap",
            Self::CrdField => "crd-field",
        }
    }

    /// Whether the rule finds images that an operator or controller starts at runtime,
    /// named outside any `image:` key.
    pub fn is_runtime(self) -> bool {
        matches!(
            self,
            Self::Arg | Self::Env | Self::ConfigMap | Self::CrdField
        )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an image was asked for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Provenance {
    /// The file, relative to the scanned root (`charts/a-1.0.tgz!/a/values.yaml` inside an
    /// archive; the given name for `--image-list` files).
    pub file: String,
    /// The 1-based line.
    pub line: usize,
    /// The rule that matched.
    pub rule: Rule,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} ({})", self.file, self.line, self.rule)
    }
}

/// One image and every place that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The normalised reference (digests kept).
    #[serde(serialize_with = "display")]
    pub reference: Reference,
    /// Where it was found, sorted by file and line.
    pub sources: Vec<Provenance>,
    /// Whether only runtime rules ([`Rule::is_runtime`]) found it: an image that a
    /// controller starts by itself, named in arguments, environment or configuration.
    pub runtime: bool,
}

/// Something that looked like an image but could not be used, or a file that could not be
/// scanned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// The file, as in [`Provenance::file`].
    pub file: String,
    /// The 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// The result of [`scan`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// The images, sorted by reference.
    pub images: Vec<Finding>,
    /// Problems, sorted by file and line.
    pub warnings: Vec<Warning>,
}

fn display<T: fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// How warnings about templated images start.
const TEMPLATED: &str = "templated image";

/// Gathers findings (deduplicated by reference) and warnings.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    images: BTreeMap<String, Finding>,
    warnings: Vec<Warning>,
    /// While a chart's templates are scanned: what their `{{ .Values… }}` resolve with.
    pub(crate) chart_values: Option<template::ChartValues>,
}

impl Collector {
    /// Records `text` as an image: a finding if it is a valid reference, else a warning.
    pub(crate) fn image(&mut self, text: &str, file: &str, line: usize, rule: Rule) {
        let text = text.trim();
        if text.contains("{{")
            && let Some(resolved) = self
                .chart_values
                .as_ref()
                .and_then(|values| values.resolve(text))
            // A value that is a template itself (`tpl`) is not followed.
            && !resolved.contains("{{")
        {
            return self.image(&resolved, file, line, Rule::TemplateValues);
        }
        if text.contains("{{")
            && self
                .chart_values
                .as_ref()
                .is_some_and(|values| values.names_image_values(text))
        {
            // `{{ include "common.images.image" (dict "imageRoot" .Values.image …) }}`: the
            // values shape it is built from is found in values.yaml (rule helm-values).
            return;
        }
        if text.contains("{{") || text.contains("${") || text.contains("$(") {
            self.warn(
                file,
                Some(line),
                format!("{TEMPLATED} {text:?} (not resolved; render it or list it)"),
            );
            return;
        }
        let reference = match text.parse::<Reference>() {
            Ok(reference) => reference,
            Err(error) => {
                self.warn(file, Some(line), error_chain(&error));
                return;
            }
        };
        let provenance = Provenance {
            file: file.to_owned(),
            line,
            rule,
        };
        let finding = self
            .images
            .entry(reference.to_string())
            .or_insert_with(|| Finding {
                reference,
                sources: Vec::new(),
                runtime: false,
            });
        // Repeats are removed when the sources are sorted (a linear check here would make
        // a large file quadratic).
        if finding.sources.last() != Some(&provenance) {
            finding.sources.push(provenance);
        }
    }

    /// Records a warning.
    pub(crate) fn warn(&mut self, file: &str, line: Option<usize>, message: String) {
        tracing::debug!(file, ?line, %message, "scan warning");
        self.warnings.push(Warning {
            file: file.to_owned(),
            line,
            message,
        });
    }

    /// Drops the warnings about templated images of `file`, which helm has rendered.
    pub(crate) fn resolved_by_helm(&mut self, file: &str) {
        self.warnings
            .retain(|warning| !(warning.file == file && warning.message.starts_with(TEMPLATED)));
    }

    /// Removes the images of an ignore list: exact references, or every tag and digest of a
    /// repository for an entry written without tag or digest.
    pub(crate) fn ignore(&mut self, list: &ImageListFile) {
        for (index, line) in list.text.lines().enumerate() {
            let entry = rules::strip_comment(line).trim();
            if entry.is_empty() {
                continue;
            }
            let reference = match entry.parse::<Reference>() {
                Ok(reference) => reference,
                Err(error) => {
                    self.warn(&list.name, Some(index + 1), error_chain(&error));
                    continue;
                }
            };
            let last = entry.rsplit('/').next().unwrap_or(entry);
            let bare = !last.contains(':') && !entry.contains('@');
            self.images.retain(|_, finding| {
                if bare {
                    finding.reference.name() != reference.name()
                } else {
                    finding.reference != reference
                }
            });
        }
    }

    fn finish(self) -> ScanReport {
        let mut images: Vec<Finding> = self.images.into_values().collect();
        for finding in &mut images {
            finding.sources.sort();
            finding.sources.dedup();
            finding.runtime = finding
                .sources
                .iter()
                .all(|source| source.rule.is_runtime());
        }
        let mut warnings = self.warnings;
        warnings.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        ScanReport { images, warnings }
    }
}
