//! `sealer images`.

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_image_store::{ImageEntry, ImageSummary, Reference, Store};
use serde_json::json;

use crate::cli::ImagesArgs;

pub fn run(store: &Store, args: &ImagesArgs) -> Result<()> {
    let mut rows = Vec::new();
    for entry in store.images()? {
        let summary = store
            .summary(&entry.descriptor)
            .with_context(|| format!("reading image {}", entry.descriptor.digest))?;
        rows.push((entry, summary));
    }
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(entry, summary)| to_json(entry, summary))
            .collect();
        say!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut table = vec![[
        "REPOSITORY".to_owned(),
        "TAG".to_owned(),
        "DIGEST".to_owned(),
        "PLATFORMS".to_owned(),
        "SIZE".to_owned(),
    ]];
    for (entry, summary) in &rows {
        let (repository, tag) = split_name(entry);
        let digest = &entry.descriptor.digest;
        table.push([
            repository,
            tag,
            if args.digests {
                digest.to_string()
            } else {
                digest.short().to_owned()
            },
            platforms(summary),
            BinaryBytes(summary.size).to_string(),
        ]);
    }
    print_table(&table)
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

fn to_json(entry: &ImageEntry, summary: &ImageSummary) -> serde_json::Value {
    json!({
        "name": entry.name,
        "digest": entry.descriptor.digest.to_string(),
        "mediaType": entry.descriptor.media_type,
        "platforms": summary.platforms.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "size": summary.size,
        "absentPlatforms": summary.absent_platforms,
    })
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
