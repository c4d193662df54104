//! `sealer images`: cluster images first, then the images they carry, then the rest; each
//! group sorted by repository, tag and digest.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};
use indicatif::BinaryBytes;
use sealer_builder::engine::{ImageKind, image_kinds};
use sealer_image_store::{ImageEntry, ImageSummary, Reference, Store};
use serde_json::json;

use crate::cli::ImagesArgs;

/// The fields a `--format` template may name, in table order.
const FIELDS: [&str; 7] = [
    "Repository",
    "Tag",
    "ID",
    "Digest",
    "Platforms",
    "Size",
    "Kind",
];

/// One listed image.
struct Row {
    entry: ImageEntry,
    summary: ImageSummary,
    kind: ImageKind,
    repository: String,
    tag: String,
}

impl Row {
    fn field(&self, name: &str) -> Option<String> {
        let digest = &self.entry.descriptor.digest;
        Some(match name {
            "Repository" => self.repository.clone(),
            "Tag" => self.tag.clone(),
            "ID" => digest.short().to_owned(),
            "Digest" => digest.to_string(),
            "Platforms" => platforms(&self.summary),
            "Size" => BinaryBytes(self.summary.size).to_string(),
            "Kind" => self.kind.as_str().to_owned(),
            _ => return None,
        })
    }
}

pub fn run(store: &Store, args: &ImagesArgs) -> Result<()> {
    let filter = args.repository.as_deref().map(Filter::parse).transpose()?;
    let entries = store.images()?;
    let kinds = image_kinds(store, &entries).context("reading the images' metadata")?;
    let mut rows = Vec::new();
    for (entry, kind) in entries.into_iter().zip(kinds) {
        if filter
            .as_ref()
            .is_some_and(|filter| !filter.matches(&entry))
        {
            continue;
        }
        let summary = store
            .summary(&entry.descriptor)
            .with_context(|| format!("reading image {}", entry.descriptor.digest))?;
        let (repository, tag) = split_name(&entry);
        rows.push(Row {
            entry,
            summary,
            kind,
            repository,
            tag,
        });
    }
    rows.sort_by(|a, b| {
        let key = |row: &Row| {
            (
                row.kind,
                row.entry.name.is_none(),
                row.repository.clone(),
                row.tag.clone(),
                row.entry.descriptor.digest.to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    if args.quiet {
        let mut seen = BTreeSet::new();
        for row in &rows {
            let id = row.field(if args.digests { "Digest" } else { "ID" });
            if let Some(id) = id.filter(|id| seen.insert(id.clone())) {
                say!("{id}");
            }
        }
        return Ok(());
    }
    let format = if args.json {
        "json"
    } else {
        args.format.as_deref().unwrap_or("table")
    };
    match format {
        "json" => {
            let list: Vec<_> = rows.iter().map(to_json).collect();
            say!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
        "table" => print_default_table(&rows, args.digests),
        template => print_template(&rows, template),
    }
}

/// `REPOSITORY[:TAG]` given on the command line.
struct Filter {
    name: String,
    tag: Option<String>,
    /// As typed, for names the store holds but cannot parse.
    text: String,
}

impl Filter {
    fn parse(text: &str) -> Result<Self> {
        let reference = Reference::parse_user_input(text)
            .with_context(|| format!("the repository filter {text:?}"))?;
        // A ':' after the last '/' is a tag (one before it is a port).
        let last = text.rsplit('/').next().unwrap_or(text);
        let tag = last
            .contains(':')
            .then(|| reference.tag().map(str::to_owned))
            .flatten();
        Ok(Self {
            name: reference.name(),
            tag,
            text: text.to_owned(),
        })
    }

    fn matches(&self, entry: &ImageEntry) -> bool {
        let Some(name) = &entry.name else {
            return false;
        };
        match name.parse::<Reference>() {
            Ok(reference) => {
                reference.name() == self.name
                    && self
                        .tag
                        .as_deref()
                        .is_none_or(|tag| reference.tag() == Some(tag))
            }
            Err(_) => *name == self.text,
        }
    }
}

/// `registry/repository` and tag, or `<none>` for untagged entries.
fn split_name(entry: &ImageEntry) -> (String, String) {
    let parsed = entry.name.as_deref().map(str::parse::<Reference>);
    match (parsed, &entry.name) {
        (Some(Ok(reference)), _) => (
            reference.name(),
            reference.tag().unwrap_or("<none>").to_owned(),
        ),
        // A name the store holds but cannot parse (written by another tool): shown as is.
        (Some(Err(_)), Some(name)) => (name.clone(), "<none>".to_owned()),
        _ => ("<none>".to_owned(), "<none>".to_owned()),
    }
}

fn platforms(summary: &ImageSummary) -> String {
    if summary.platforms.is_empty() {
        return "-".to_owned();
    }
    let names: Vec<String> = summary.platforms.iter().map(ToString::to_string).collect();
    match summary.absent_platforms {
        0 => names.join(","),
        absent => format!("{} (+{absent} absent)", names.join(",")),
    }
}

fn to_json(row: &Row) -> serde_json::Value {
    let (entry, summary) = (&row.entry, &row.summary);
    json!({
        "name": entry.name,
        "repository": row.repository,
        "tag": row.tag,
        "digest": entry.descriptor.digest.to_string(),
        "id": entry.descriptor.digest.short(),
        "kind": row.kind.as_str(),
        "mediaType": entry.descriptor.media_type,
        "platforms": summary.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "size": summary.size,
        "absentPlatforms": summary.absent_platforms,
    })
}

fn print_default_table(rows: &[Row], digests: bool) -> Result<()> {
    let mut table =
        vec![["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "KIND"].map(str::to_owned)];
    for row in rows {
        table.push(
            [
                "Repository",
                "Tag",
                if digests { "Digest" } else { "ID" },
                "Platforms",
                "Size",
                "Kind",
            ]
            .map(|field| row.field(field).unwrap_or_default()),
        );
    }
    print_table(&table)
}

/// One piece of a `--format` template.
enum Piece {
    Text(String),
    Field(&'static str),
}

/// Parses a Go-template-like `--format`: `{{.Field}}` and text with `\t`, `\n` escapes.
fn parse_template(template: &str) -> Result<Vec<Piece>> {
    let unescape = |text: &str| text.replace("\\t", "\t").replace("\\n", "\n");
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(unescape(&rest[..start])));
        }
        let Some(end) = rest[start..].find("}}") else {
            bail!("--format {template:?}: a '{{{{' is not closed by '}}}}'");
        };
        let inner = rest[start + 2..start + end].trim();
        let field = inner
            .strip_prefix('.')
            .and_then(|name| FIELDS.iter().find(|field| **field == name))
            .with_context(|| {
                format!(
                    "--format: unknown field {{{{{inner}}}}}; the fields are {}",
                    FIELDS.map(|field| format!(".{field}")).join(" ")
                )
            })?;
        pieces.push(Piece::Field(field));
        rest = &rest[start + end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(unescape(rest)));
    }
    Ok(pieces)
}

fn print_template(rows: &[Row], format: &str) -> Result<()> {
    let (header, template) = match format.strip_prefix("table ") {
        Some(template) => (true, template),
        None => (false, format),
    };
    let pieces = parse_template(template)?;
    let render = |value: &dyn Fn(&'static str) -> String| {
        pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.clone(),
                Piece::Field(field) => value(field),
            })
            .collect::<String>()
    };
    if header {
        say!("{}", render(&|field| field.to_uppercase()));
    }
    for row in rows {
        say!("{}", render(&|field| row.field(field).unwrap_or_default()));
    }
    Ok(())
}

fn print_table<const N: usize>(rows: &[[String; N]]) -> Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   "));
            }
        }
        say!("{}", line.trim_end());
    }
    Ok(())
}
