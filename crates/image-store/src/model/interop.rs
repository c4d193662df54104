//! Conversions to and from the `oci-spec` crate's image types (feature `oci-spec`), for
//! programs that already speak it.
//!
//! Every conversion is checked to be lossless: the result must serialise to the same JSON as
//! the input, up to fields that are absent on one side and empty (`[]`, `{}`, `null`) on the
//! other. `oci-spec` has no place for fields its version does not know, so a document carrying
//! such a field (kept in an `extra` map here) does not convert to it: the error names the field.
//! The other way can fail too, on a digest algorithm this store does not accept.

use oci_spec::image as oci;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Descriptor, ImageConfig, Index, Manifest, Platform};

/// Why a document does not convert to or from its `oci-spec` counterpart.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    /// The document does not fit the other type (a digest algorithm this store does not
    /// accept, a required field missing).
    #[error("{what} does not fit the target type")]
    Shape {
        /// The kind of document (`manifest`, `descriptor`, …).
        what: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The target type has no place for a field: converting would drop it.
    #[error("{what} field {path} has no place in the target type; converting would lose it")]
    Lossy {
        /// The kind of document.
        what: &'static str,
        /// The JSON path of the first field that would be lost or changed (`/config/extra`).
        path: String,
    },
}

/// Converts through JSON and checks that nothing was lost on the way.
fn convert<From, To>(what: &'static str, from: &From) -> Result<To, ConversionError>
where
    From: Serialize,
    To: Serialize + DeserializeOwned,
{
    let shape = |source| ConversionError::Shape { what, source };
    let before = serde_json::to_value(from).map_err(shape)?;
    let converted: To = serde_json::from_value(before.clone()).map_err(shape)?;
    let after = serde_json::to_value(&converted).map_err(shape)?;
    match first_difference(&before, &after) {
        Some(path) => Err(ConversionError::Lossy { what, path }),
        None => Ok(converted),
    }
}

/// Whether a value says nothing: absent, `null`, `[]` or `{}`.
fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(fields)) => fields.is_empty(),
        Some(_) => false,
    }
}

/// The JSON path of the first place where `a` and `b` differ, empty values counting as absent.
fn first_difference(a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(left), Value::Object(right)) => {
            let mut keys: Vec<&String> = left.keys().chain(right.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .find_map(|key| match (left.get(key), right.get(key)) {
                    (l, r) if is_empty(l) && is_empty(r) => None,
                    (Some(l), Some(r)) => {
                        first_difference(l, r).map(|rest| format!("/{key}{rest}"))
                    }
                    _ => Some(format!("/{key}")),
                })
        }
        (Value::Array(left), Value::Array(right)) if left.len() == right.len() => left
            .iter()
            .zip(right)
            .enumerate()
            .find_map(|(n, (l, r))| first_difference(l, r).map(|rest| format!("/{n}{rest}"))),
        _ if a == b => None,
        _ => Some(String::new()),
    }
}

/// `TryFrom` both ways, for owned values and references, between one of our types and its
/// `oci-spec` counterpart.
macro_rules! conversions {
    ($ours:ty, $theirs:ty, $what:literal) => {
        impl TryFrom<&$ours> for $theirs {
            type Error = ConversionError;
            fn try_from(value: &$ours) -> Result<Self, Self::Error> {
                convert($what, value)
            }
        }
        impl TryFrom<$ours> for $theirs {
            type Error = ConversionError;
            fn try_from(value: $ours) -> Result<Self, Self::Error> {
                convert($what, &value)
            }
        }
        impl TryFrom<&$theirs> for $ours {
            type Error = ConversionError;
            fn try_from(value: &$theirs) -> Result<Self, Self::Error> {
                convert($what, value)
            }
        }
        impl TryFrom<$theirs> for $ours {
            type Error = ConversionError;
            fn try_from(value: $theirs) -> Result<Self, Self::Error> {
                convert($what, &value)
            }
        }
    };
}

conversions!(Descriptor, oci::Descriptor, "descriptor");
conversions!(Platform, oci::Platform, "platform");
conversions!(Manifest, oci::ImageManifest, "manifest");
conversions!(Index, oci::ImageIndex, "index");
conversions!(ImageConfig, oci::ImageConfiguration, "image config");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_ignore_empty_values_and_name_the_path() {
        let a = json!({"a": [1, {"b": 2}], "urls": []});
        assert_eq!(first_difference(&a, &json!({"a": [1, {"b": 2}]})), None);
        assert_eq!(
            first_difference(&a, &json!({"a": [1, {"b": 3}]})).as_deref(),
            Some("/a/1/b")
        );
        assert_eq!(first_difference(&a, &json!({})).as_deref(), Some("/a"));
    }
}
