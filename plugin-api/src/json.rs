//! Typed JSON input and output for plugins whose callers speak JSON.
//!
//! ```
//! use plugin_api::{json, PluginError};
//! let numbers: Vec<i64> = json::from_input(b"[1, 2, 3]")?;
//! assert_eq!(numbers, [1, 2, 3]);
//! # Ok::<(), PluginError>(())
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::plugin::{Output, PluginError};

/// Parses the input as JSON into `T`; the error says what was wrong and where.
pub fn from_input<T: DeserializeOwned>(input: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(input).map_err(|e| PluginError::new(format!("invalid JSON input: {e}")))
}

/// Writes `value` as JSON to the output.
pub fn write<T: Serialize + ?Sized>(output: &mut Output<'_>, value: &T) -> Result<(), PluginError> {
    serde_json::to_writer(output, value)
        .map_err(|e| PluginError::new(format!("could not serialize output: {e}")))
}
