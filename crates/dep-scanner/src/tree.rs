//! Walking the scanned tree: which files are manifests, image lists and Helm charts (directories
//! and `.tgz` archives, read in memory).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sealer_fs_abstraction::{FileKind, Fs};

use crate::rules::{self, Context};
use crate::template::ChartValues;
use crate::yaml;
use crate::{Collector, Rule, ScanError, ScanOptions, ScanReport};

/// Files larger than this are not read (a warning says so).
const MAX_FILE: u64 = 64 << 20;
/// The most a `.tgz` chart may expand to in memory.
const MAX_ARCHIVE: u64 = 256 << 20;
/// How deep `.tgz` subcharts may nest.
const MAX_NESTING: usize = 8;

/// Scans the tree of `fs` (see the crate documentation for what is scanned) and the extra
/// lists of `options`.
pub fn scan(fs: &dyn Fs, options: &ScanOptions) -> Result<ScanReport, ScanError> {
    let mut collector = Collector::default();
    let mut renderer = Renderer {
        helm: options.helm.clone(),
    };
    let mut found_area = false;
    for (area, text_lists) in [
        ("manifests", true),
        ("charts", false),
        ("application/apps", false),
    ] {
        if is_dir(fs, Path::new(area))? {
            found_area = true;
            scan_tree(fs, area, text_lists, &mut renderer, &mut collector)?;
        }
    }
    if is_file(fs, Path::new("imageList"))? {
        found_area = true;
        if let Some(text) = read_text(fs, Path::new("imageList"), &mut collector)? {
            rules::scan_image_list(&text, "imageList", Rule::ImageList, &mut collector);
        }
    }
    if !found_area {
        scan_tree(fs, ".", true, &mut renderer, &mut collector)?;
    }
    for list in &options.image_lists {
        rules::scan_image_list(&list.text, &list.name, Rule::ExtraImageList, &mut collector);
    }
    for list in &options.ignored_image_lists {
        collector.ignore(list);
    }
    let report = collector.finish();
    tracing::info!(
        images = report.images.len(),
        warnings = report.warnings.len(),
        "scan done"
    );
    Ok(report)
}

fn is_dir(fs: &dyn Fs, path: &Path) -> Result<bool, ScanError> {
    match fs.metadata(path) {
        Ok(metadata) => Ok(metadata.kind == FileKind::Dir),
        Err(error) if error.is_not_found() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

fn is_file(fs: &dyn Fs, path: &Path) -> Result<bool, ScanError> {
    match fs.metadata(path) {
        Ok(metadata) => Ok(metadata.kind == FileKind::File),
        Err(error) if error.is_not_found() => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// `path` as shown in provenance: relative to the root, `/`-separated.
fn show(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A file's text, or `None` (and a warning) when it is too large or not UTF-8.
fn read_text(
    fs: &dyn Fs,
    path: &Path,
    collector: &mut Collector,
) -> Result<Option<String>, ScanError> {
    match read_bytes(fs, path, collector)? {
        Some(data) => Ok(text_of(data, &show(path), collector)),
        None => Ok(None),
    }
}

fn read_bytes(
    fs: &dyn Fs,
    path: &Path,
    collector: &mut Collector,
) -> Result<Option<Vec<u8>>, ScanError> {
    let metadata = fs.metadata(path)?;
    if metadata.len > MAX_FILE {
        collector.warn(
            &show(path),
            None,
            format!("not scanned: larger than {MAX_FILE} bytes"),
        );
        return Ok(None);
    }
    Ok(Some(fs.read(path)?))
}

fn text_of(data: Vec<u8>, file: &str, collector: &mut Collector) -> Option<String> {
    match String::from_utf8(data) {
        Ok(text) => Some(text),
        Err(_) => {
            collector.warn(file, None, "not scanned: not UTF-8 text".to_owned());
            None
        }
    }
}

/// What a file outside charts is.
enum Kind {
    Yaml,
    ImageList,
    Archive,
}

fn kind_of(path: &str, text_lists: bool) -> Option<Kind> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name == "imageList" {
        return Some(Kind::ImageList);
    }
    let extension = name.rsplit_once('.').map(|(_, extension)| extension);
    match extension {
        Some("yaml" | "yml" | "tmpl") => Some(Kind::Yaml),
        Some("txt") if text_lists => Some(Kind::ImageList),
        Some("tgz") => Some(Kind::Archive),
        _ => None,
    }
}

/// Scans everything below `dir`: charts as units, other files by kind.
fn scan_tree(
    fs: &dyn Fs,
    dir: &str,
    text_lists: bool,
    renderer: &mut Renderer,
    collector: &mut Collector,
) -> Result<(), ScanError> {
    let mut files = Vec::new();
    for entry in fs.walk(Path::new(dir))? {
        let path = show(&entry.path);
        match entry.metadata.kind {
            FileKind::File => files.push(path),
            FileKind::Symlink => match fs.metadata(&entry.path) {
                Ok(metadata) if metadata.kind == FileKind::File => files.push(path),
                Ok(metadata) if metadata.kind == FileKind::Dir => collector.warn(
                    &path,
                    None,
                    "not scanned: a symlink to a directory is not followed".to_owned(),
                ),
                Ok(_) => {}
                Err(error) => collector.warn(&path, None, format!("not scanned: {error}")),
            },
            FileKind::Dir | FileKind::Other => {}
        }
    }
    // Charts: directories holding Chart.yaml; the outermost one takes its subcharts along.
    let mut chart_roots: Vec<String> = files
        .iter()
        .filter_map(|path| chart_root_of(path))
        .collect();
    chart_roots.sort();
    chart_roots.dedup();
    let mut outermost: Vec<String> = Vec::new();
    for root in chart_roots {
        if !outermost.iter().any(|outer| is_under(&root, outer)) {
            outermost.push(root);
        }
    }
    let mut charts: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for path in files {
        if let Some(root) = outermost.iter().find(|root| is_under(&path, root)) {
            if chart_file_wanted(&path)
                && let Some(data) = read_bytes(fs, Path::new(&path), collector)?
            {
                charts.entry(root.clone()).or_default().insert(path, data);
            }
            continue;
        }
        match kind_of(&path, text_lists) {
            Some(Kind::Yaml) => {
                if let Some(text) = read_text(fs, Path::new(&path), collector)? {
                    scan_yaml(&text, &path, None, collector);
                }
            }
            Some(Kind::ImageList) => {
                if let Some(text) = read_text(fs, Path::new(&path), collector)? {
                    rules::scan_image_list(&text, &path, Rule::ImageList, collector);
                }
            }
            Some(Kind::Archive) => {
                if let Some(data) = read_bytes(fs, Path::new(&path), collector)?
                    && scan_archive(&data, &path, 0, collector)
                {
                    renderer.render(fs, &path, true, collector);
                }
            }
            None => {}
        }
    }
    for (root, files) in charts {
        scan_chart_files(&files, "", 0, collector);
        renderer.render(fs, &root, false, collector);
    }
    Ok(())
}

/// Renders charts with `helm template` when a helm binary is configured and starts.
struct Renderer {
    helm: Option<PathBuf>,
}

impl Renderer {
    /// Renders the chart at `path` (a directory, or a `.tgz` when `archive`) and scans the
    /// output; a failed render is a warning.
    fn render(&mut self, fs: &dyn Fs, path: &str, archive: bool, collector: &mut Collector) {
        let Some(helm) = &self.helm else { return };
        let file = if path.is_empty() { "." } else { path };
        let chart = fs.display_path(Path::new(file));
        let output = Command::new(helm)
            .args(["template", "sealer-scan"])
            .arg(&chart)
            .stdin(Stdio::null())
            .output();
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                // Optional: without helm, charts are scanned statically only.
                tracing::debug!(helm = %helm.display(), %error, "helm not available");
                self.helm = None;
                return;
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            collector.warn(
                file,
                None,
                format!("helm template failed: {}", stderr.trim()),
            );
            return;
        }
        let Some(text) = text_of(output.stdout, file, collector) else {
            return;
        };
        for (source, chunk) in rendered_sources(&text) {
            let shown = if archive {
                format!("{path}!/{source}")
            } else {
                let inner = source.split_once('/').map_or(source, |(_, rest)| rest);
                if path.is_empty() {
                    inner.to_owned()
                } else {
                    format!("{path}/{inner}")
                }
            };
            match yaml::parse_documents(&chunk) {
                Ok(documents) => {
                    let context = Context {
                        file: &shown,
                        default_tag: None,
                        rule: Some(Rule::HelmTemplate),
                    };
                    for document in &documents {
                        rules::scan_document(document, &context, collector);
                    }
                }
                Err(error) => collector.warn(
                    &shown,
                    Some(error.line),
                    format!("rendered by helm, not YAML ({})", error.message),
                ),
            }
        }
    }
}

/// Splits `helm template` output at its `# Source: <chart>/<path>` lines: each template's
/// rendered text, its line 1 being the line after the marker.
fn rendered_sources(text: &str) -> Vec<(&str, String)> {
    let mut sources: Vec<(&str, String)> = Vec::new();
    for line in text.lines() {
        if let Some(source) = line.strip_prefix("# Source: ") {
            sources.push((source.trim(), String::new()));
        } else if let Some((_, chunk)) = sources.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    sources
}

/// The chart directory of a `Chart.yaml` path (`""` for the top).
fn chart_root_of(path: &str) -> Option<String> {
    if path == "Chart.yaml" {
        return Some(String::new());
    }
    path.strip_suffix("/Chart.yaml").map(str::to_owned)
}

/// Whether `path` is `root` or below it (`""` is the top).
fn is_under(path: &str, root: &str) -> bool {
    root.is_empty()
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn chart_file_wanted(path: &str) -> bool {
    [".yaml", ".yml", ".tgz"]
        .iter()
        .any(|extension| path.ends_with(extension))
}

/// Parses `text` and runs the rules on every document; a template that is not YAML falls
/// back to its `image:` lines, anything else that is not YAML is a warning.
fn scan_yaml(text: &str, file: &str, default_tag: Option<&str>, collector: &mut Collector) {
    match yaml::parse_documents(text) {
        Ok(documents) => {
            let context = Context {
                file,
                default_tag,
                rule: None,
            };
            for document in &documents {
                rules::scan_document(document, &context, collector);
            }
        }
        Err(_) if text.contains("{{") => rules::scan_template_lines(text, file, collector),
        Err(error) => collector.warn(
            file,
            Some(error.line),
            format!("not scanned: not YAML ({})", error.message),
        ),
    }
}

/// Scans the charts among `files` (paths relative to a common base, shown after `prefix`):
/// each file belongs to the innermost chart holding it.
fn scan_chart_files(
    files: &BTreeMap<String, Vec<u8>>,
    prefix: &str,
    depth: usize,
    collector: &mut Collector,
) {
    let mut roots: Vec<String> = files
        .keys()
        .filter_map(|path| chart_root_of(path))
        .collect();
    // Innermost first.
    roots.sort_by_key(|root| std::cmp::Reverse(root.len()));
    let mut app_versions: BTreeMap<&str, Option<String>> = BTreeMap::new();
    let mut chart_values: BTreeMap<&str, ChartValues> = BTreeMap::new();
    for root in &roots {
        let in_chart = |name: &str| {
            if root.is_empty() {
                name.to_owned()
            } else {
                format!("{root}/{name}")
            }
        };
        let first_document = |name: &str| {
            files
                .get(&in_chart(name))
                .and_then(|data| std::str::from_utf8(data).ok())
                .and_then(|text| yaml::parse_documents(text).ok())
                .and_then(|documents| documents.into_iter().next())
        };
        let version = first_document("Chart.yaml").and_then(|document| {
            document
                .get("appVersion")
                .and_then(|node| node.as_str())
                .map(str::to_owned)
        });
        chart_values.insert(
            root,
            ChartValues {
                values: first_document("values.yaml"),
                app_version: version.clone(),
            },
        );
        app_versions.insert(root, version);
    }
    for (path, data) in files {
        let file = format!("{prefix}{path}");
        let Some(root) = roots.iter().find(|root| is_under(path, root)) else {
            // Outside any chart (an archive without Chart.yaml at its top).
            if (path.ends_with(".yaml") || path.ends_with(".yml"))
                && let Some(text) = text_of(data.clone(), &file, collector)
            {
                scan_yaml(&text, &file, None, collector);
            }
            continue;
        };
        let inner = if root.is_empty() {
            path.as_str()
        } else {
            &path[root.len() + 1..]
        };
        if inner.starts_with("charts/") && inner.ends_with(".tgz") {
            scan_archive(data, &file, depth + 1, collector);
            continue;
        }
        let default_tag = app_versions.get(root.as_str()).cloned().flatten();
        let wanted =
            inner == "values.yaml" || inner.starts_with("templates/") || inner.starts_with("crds/");
        if !wanted || inner.ends_with(".tgz") {
            continue;
        }
        let Some(text) = text_of(data.clone(), &file, collector) else {
            continue;
        };
        if inner == "values.yaml" {
            scan_yaml(&text, &file, default_tag.as_deref(), collector);
        } else {
            collector.chart_values = chart_values.get(root.as_str()).cloned();
            scan_yaml(&text, &file, None, collector);
            collector.chart_values = None;
        }
    }
}

/// Scans a `.tgz` Helm chart, read in memory (never unpacked); whether it was one.
fn scan_archive(data: &[u8], file: &str, depth: usize, collector: &mut Collector) -> bool {
    if depth > MAX_NESTING {
        collector.warn(
            file,
            None,
            "not scanned: subcharts nested too deep".to_owned(),
        );
        return false;
    }
    match read_archive(data) {
        Ok(files) => {
            if !files.keys().any(|path| chart_root_of(path).is_some()) {
                collector.warn(
                    file,
                    None,
                    "not scanned: an archive without Chart.yaml".to_owned(),
                );
                return false;
            }
            scan_chart_files(&files, &format!("{file}!/"), depth, collector);
            true
        }
        Err(message) => {
            collector.warn(file, None, format!("not scanned: {message}"));
            false
        }
    }
}

/// The YAML and `.tgz` files of a gzip'd tar, by normalised path.
fn read_archive(data: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(data));
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let entries = archive.entries().map_err(|error| error.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|error| error.to_string())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|error| error.to_string())?;
        let mut parts = Vec::new();
        for component in path.components() {
            match component {
                std::path::Component::Normal(part) => parts.push(part.to_string_lossy()),
                std::path::Component::CurDir => {}
                _ => return Err(format!("entry {} leaves the archive", path.display())),
            }
        }
        let path = parts.join("/");
        if !chart_file_wanted(&path) {
            continue;
        }
        total = total.saturating_add(entry.size());
        if total > MAX_ARCHIVE {
            return Err(format!("expands to more than {MAX_ARCHIVE} bytes"));
        }
        let mut content = Vec::new();
        entry
            .by_ref()
            .take(MAX_ARCHIVE)
            .read_to_end(&mut content)
            .map_err(|error| error.to_string())?;
        files.insert(path, content);
    }
    Ok(files)
}
