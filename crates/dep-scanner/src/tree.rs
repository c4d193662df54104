//! Walking the scanned tree: which files are manifests, image lists and Helm charts (directories
//! and `.tgz` archives, read in memory).

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sealer_fs_abstraction::{ErrorChain, FileKind, Fs, FsError, error_chain};

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

/// The areas of a cluster tree that are scanned when present.
const AREAS: [&str; 3] = ["manifests", "charts", "application/apps"];

/// Scans the tree of `fs` (see the crate documentation for what is scanned) and the extra
/// lists of `options`.
pub fn scan(fs: &dyn Fs, options: &ScanOptions) -> Result<ScanReport, ScanError> {
    scan_tree_or_areas(fs, options, true)
}

/// Scans a cluster image's rootfs: only its areas (`manifests/`, `charts/`,
/// `application/apps/`, the root's `imageList`, or the root as a chart), never the rest of a
/// root that has none of them (a base image's binaries and scripts are not manifests), and
/// the extra lists of `options`. What `sealer build` carries is decided by this.
pub fn scan_cluster_rootfs(fs: &dyn Fs, options: &ScanOptions) -> Result<ScanReport, ScanError> {
    scan_tree_or_areas(fs, options, false)
}

/// [`scan`] (`whole_without_areas`: a root without areas is scanned whole) or
/// [`scan_cluster_rootfs`].
fn scan_tree_or_areas(
    fs: &dyn Fs,
    options: &ScanOptions,
    whole_without_areas: bool,
) -> Result<ScanReport, ScanError> {
    let mut collector = Collector::default();
    let mut renderer = Renderer {
        helm: options.helm.clone(),
    };
    let mut found_area = false;
    if is_file(fs, Path::new("Chart.yaml"))? {
        // The root is a chart: its `charts/` are its subcharts, not an area.
        found_area = true;
        scan_tree(fs, ".", &mut renderer, &mut collector)?;
    } else {
        for area in AREAS {
            if is_dir(fs, Path::new(area))? {
                found_area = true;
                scan_tree(fs, area, &mut renderer, &mut collector)?;
            }
        }
        if is_file(fs, Path::new("imageList"))? {
            found_area = true;
            if let Some(text) = read_text(fs, Path::new("imageList"), &mut collector)? {
                rules::scan_image_list(&text, "imageList", Rule::ImageList, &mut collector);
            }
        }
        if found_area {
            warn_outside_areas(fs, &mut collector)?;
        }
    }
    if !found_area && whole_without_areas {
        scan_tree(fs, ".", &mut renderer, &mut collector)?;
    }
    Ok(finish(collector, options))
}

/// Scans one file of `fs` (a YAML manifest, a `.tgz` chart, or an image list named
/// `imageList`) and the extra lists of `options`.
pub fn scan_file(fs: &dyn Fs, path: &Path, options: &ScanOptions) -> Result<ScanReport, ScanError> {
    let mut collector = Collector::default();
    let mut renderer = Renderer {
        helm: options.helm.clone(),
    };
    let file = show(path);
    match kind_of(&file) {
        Some(Kind::ImageList) => {
            if let Some(text) = read_text(fs, path, &mut collector)? {
                rules::scan_image_list(&text, &file, Rule::ImageList, &mut collector);
            }
        }
        Some(Kind::Archive) => {
            if let Some(data) = read_bytes(fs, path, &mut collector)?
                && scan_archive(&data, &file, 0, &mut collector)
            {
                renderer.render(fs, &file, true, &mut collector);
            }
        }
        // Named explicitly: read as YAML whatever its name.
        Some(Kind::Yaml) | None => scan_yaml_file(fs, path, &mut collector)?,
    }
    Ok(finish(collector, options))
}

fn finish(mut collector: Collector, options: &ScanOptions) -> ScanReport {
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
    report
}

/// How much of a YAML file outside the areas is read to tell whether it is Kubernetes YAML.
const SNIFF: u64 = 64 << 10;

/// Names what a tree with areas leaves out that looks like Kubernetes YAML or a chart.
fn warn_outside_areas(fs: &dyn Fs, collector: &mut Collector) -> Result<(), ScanError> {
    let mut charts: Vec<String> = Vec::new();
    for entry in fs.walk(Path::new("."))? {
        let path = show(&entry.path);
        if entry.metadata.kind != FileKind::File
            || path == "imageList"
            || AREAS.iter().any(|area| is_under(&path, area))
            || charts.iter().any(|chart| is_under(&path, chart))
        {
            continue;
        }
        if let Some(root) = chart_root_of(&path) {
            collector.warn(
                &root,
                None,
                "not scanned: a Helm chart outside charts/ (move it there to have its images found)"
                    .to_owned(),
            );
            charts.push(root);
            continue;
        }
        let kubernetes = match kind_of(&path) {
            Some(Kind::Yaml) => {
                let mut head = Vec::new();
                fs.open(&entry.path)?
                    .take(SNIFF)
                    .read_to_end(&mut head)
                    .map_err(|source| FsError::io("read", fs.display_path(&entry.path), source))?;
                let head = String::from_utf8_lossy(&head);
                head.contains("apiVersion") && head.contains("kind")
            }
            _ => false,
        };
        if kubernetes {
            collector.warn(
                &path,
                None,
                "not scanned: Kubernetes YAML outside manifests/, charts/ and application/apps/ \
                 (move it there to have its images found)"
                    .to_owned(),
            );
        }
    }
    Ok(())
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

/// Image lists are only files named `imageList` (other text, `NOTES.txt`, is not a list).
fn kind_of(path: &str) -> Option<Kind> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name == "imageList" {
        return Some(Kind::ImageList);
    }
    let extension = name.rsplit_once('.').map(|(_, extension)| extension);
    match extension {
        Some("yaml" | "yml" | "json" | "tmpl") => Some(Kind::Yaml),
        Some("tgz") => Some(Kind::Archive),
        _ => None,
    }
}

/// Scans everything below `dir`: charts as units, other files by kind.
fn scan_tree(
    fs: &dyn Fs,
    dir: &str,
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
                Err(error) => {
                    collector.warn(&path, None, format!("not scanned: {}", ErrorChain(&error)))
                }
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
        match kind_of(&path) {
            Some(Kind::Yaml) => scan_yaml_file(fs, Path::new(&path), collector)?,
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
                tracing::debug!(helm = %helm.display(), error = %ErrorChain(&error), "helm not available");
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
            let template = if archive {
                format!("{path}!/{source}")
            } else {
                let inner = source.split_once('/').map_or(source, |(_, rest)| rest);
                if path.is_empty() {
                    inner.to_owned()
                } else {
                    format!("{path}/{inner}")
                }
            };
            // Lines are those of helm's output for this template, not of the template.
            let shown = format!("{template} (rendered)");
            let context = Context {
                rule: Some(Rule::HelmTemplate),
                ..Context::plain(&shown)
            };
            let mut rendered = true;
            for document in yaml::parse_documents(&chunk) {
                match document {
                    Ok(document) => rules::scan_document(&document, &context, collector),
                    Err(error) => {
                        rendered = false;
                        collector.warn(
                            &shown,
                            Some(error.line),
                            format!("rendered by helm, not YAML ({})", error.message),
                        );
                    }
                }
            }
            if rendered {
                collector.resolved_by_helm(&template);
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

/// Streams a YAML file document by document (never the whole file in memory as a tree).
fn scan_yaml_file(fs: &dyn Fs, path: &Path, collector: &mut Collector) -> Result<(), ScanError> {
    let file = show(path);
    let mut reader = std::io::BufReader::with_capacity(1 << 16, fs.open(path)?);
    let mut splitter = yaml::Splitter::default();
    let mut line = Vec::new();
    let mut line_number = 0usize;
    // The first line of the current document that is not UTF-8.
    let mut not_utf8: Option<usize> = None;
    let context = Context::plain(&file);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| FsError::io("read", fs.display_path(path), source))?;
        if read == 0 {
            break;
        }
        line_number += 1;
        let bad = std::str::from_utf8(&line).is_err();
        if let Some(chunk) = splitter.push(&String::from_utf8_lossy(&line)) {
            scan_chunk(&chunk, &context, not_utf8.take(), collector);
        }
        if bad {
            not_utf8.get_or_insert(line_number);
        }
    }
    if let Some(chunk) = splitter.finish() {
        scan_chunk(&chunk, &context, not_utf8, collector);
    }
    Ok(())
}

/// Runs the rules on every document of `text` (a file read whole: chart files).
fn scan_yaml(text: &str, context: &Context<'_>, collector: &mut Collector) {
    for chunk in yaml::split(text) {
        scan_chunk(&chunk, context, None, collector);
    }
}

/// One document: the rules on its tree; a template that is not YAML falls back to its
/// `image:` lines; anything else that is not YAML is a warning, and the next document goes on.
fn scan_chunk(
    chunk: &yaml::Chunk,
    context: &Context<'_>,
    not_utf8: Option<usize>,
    collector: &mut Collector,
) {
    let file = context.file;
    if let Some(line) = not_utf8 {
        collector.warn(
            file,
            Some(line),
            "document not scanned: not UTF-8 text".to_owned(),
        );
        return;
    }
    match yaml::parse_chunk(chunk) {
        Ok(documents) => {
            for document in &documents {
                rules::scan_document(document, context, collector);
            }
            if chunk.text.contains("{{") {
                rules::scan_template_lines(&chunk.text, chunk.first_line, file, true, collector);
            }
        }
        Err(error) if error.over_budget => collector.warn(
            file,
            Some(error.line),
            format!("document not scanned: {}", error.message),
        ),
        Err(_) if chunk.text.contains("{{") => {
            rules::scan_template_lines(&chunk.text, chunk.first_line, file, false, collector);
        }
        Err(error) => collector.warn(
            file,
            Some(error.line),
            format!("document not scanned: not YAML ({})", error.message),
        ),
    }
}

/// Scans the charts among `files` (paths relative to a common base, shown after `prefix`):
/// each file belongs to the innermost chart holding it; a subchart's templates see its
/// values as Helm coalesces them (its parent's `NAME:` section and `global:` over its own).
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
    // Outermost first: a parent's values are known before its subcharts'.
    roots.sort_by_key(String::len);
    let mut chart_values: BTreeMap<String, ChartValues> = BTreeMap::new();
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
                .and_then(yaml::first_document)
        };
        let chart = first_document("Chart.yaml");
        let app_version = chart
            .as_ref()
            .and_then(|chart| chart.get("appVersion")?.as_str())
            .map(str::to_owned);
        let own = first_document("values.yaml");
        // The parent: the innermost other root holding this one's `charts/` directory.
        let parent = roots
            .iter()
            .filter(|other| other.len() < root.len() && is_under(root, other))
            .max_by_key(|other| other.len())
            .and_then(|parent| chart_values.get(parent));
        let values = match parent {
            Some(parent) => {
                let name = chart
                    .as_ref()
                    .and_then(|chart| chart.get("name")?.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| root.rsplit('/').next().unwrap_or(root).to_owned());
                parent.for_subchart(&name, own)
            }
            None => own,
        };
        chart_values.insert(
            root.clone(),
            ChartValues {
                values,
                app_version,
            },
        );
    }
    // Innermost first, to find the chart of each file.
    roots.reverse();
    for (path, data) in files {
        let file = format!("{prefix}{path}");
        let Some(root) = roots.iter().find(|root| is_under(path, root)) else {
            // Outside any chart (an archive without Chart.yaml at its top).
            if (path.ends_with(".yaml") || path.ends_with(".yml"))
                && let Some(text) = text_of(data.clone(), &file, collector)
            {
                scan_yaml(&text, &Context::plain(&file), collector);
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
        let wanted =
            inner == "values.yaml" || inner.starts_with("templates/") || inner.starts_with("crds/");
        if !wanted || inner.ends_with(".tgz") {
            continue;
        }
        let Some(text) = text_of(data.clone(), &file, collector) else {
            continue;
        };
        let values = chart_values.get(root).cloned().unwrap_or_default();
        let image_registry = values.image_registry().map(str::to_owned);
        if inner == "values.yaml" {
            let context = Context {
                default_tag: values.app_version.as_deref(),
                image_registry: image_registry.as_deref(),
                ..Context::plain(&file)
            };
            scan_yaml(&text, &context, collector);
        } else {
            collector.chart_values = Some(values);
            scan_yaml(&text, &Context::plain(&file), collector);
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
    let entries = archive.entries().map_err(|error| error_chain(&error))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| error_chain(&error))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|error| error_chain(&error))?;
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
            .map_err(|error| error_chain(&error))?;
        files.insert(path, content);
    }
    Ok(files)
}
