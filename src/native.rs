//! Native shell: models read from files on disk.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::Model;

impl Model {
    /// Opens the GGUF file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when it cannot be opened, and any error of
    /// [`Model::read`].
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Model::read(&mut open(path.as_ref())?)
    }

    /// Opens the GGUF file at `path` with the tokenizer.json at `tokenizer_json`, which takes
    /// precedence over the file's own tokenizer.
    ///
    /// # Errors
    /// [`Error::Io`] naming a path that cannot be read, and any error of
    /// [`Model::read_with_tokenizer_json`].
    pub fn open_with_tokenizer_json(path: impl AsRef<Path>, tokenizer_json: impl AsRef<Path>) -> Result<Model> {
        let json_path = tokenizer_json.as_ref();
        let json = std::fs::read(json_path).map_err(|e| with_path(e, json_path))?;
        Model::read_with_tokenizer_json(&mut open(path.as_ref())?, &json)
    }
}

fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|e| with_path(e, path))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn with_path(e: std::io::Error, path: &Path) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
