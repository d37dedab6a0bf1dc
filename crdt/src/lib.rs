//! The pure model of a teatime folder: what a shared folder *is*, with no IO.
//!
//! A shared folder is a set of Automerge documents:
//!
//! - one [`FolderDoc`]: the tree. Every file and directory is an entry keyed by a
//!   random [`DocId`]; its location (parent directory entry + name) is metadata, so a
//!   rename is one field write and a concurrent edit follows the file to its new name.
//!   It also lists the folder's members.
//! - one [`FileDoc`] per text file: an Automerge Text holding the file's exact content
//!   (CRLF, BOM and a missing final newline included).
//!
//! Local content enters a [`FileDoc`] through [`text::diff_splices`]: a line-then-character
//! diff with a deadline, so a huge rewrite can never stall the node.
//!
//! The folder's on-disk shape is a pure function of the documents: [`tree::render`] turns
//! entries into paths deterministically, settling the races the CRDT cannot settle alone
//! (rename vs rename, rename vs delete, create vs create, ...) by the folder's
//! [`Strategy`], so every peer that has seen the same changes renders the same tree.
//!
//! This crate never touches the file system, the network, a clock or a random source:
//! ids, actors and deadlines are passed in. That is what lets a simulator drive many
//! replicas in one thread, and what the property tests rely on.
#![deny(missing_docs)]

pub mod chunk;
pub mod creation;
pub mod file;
pub mod folder;
pub mod history;
pub mod ids;
pub mod path;
pub mod text;
pub mod tree;

pub use automerge;
pub use file::FileDoc;
pub use folder::{BlobRef, Deletion, Entry, EntryKind, FolderDoc, Location, Member, Stamp, Strategy};
pub use ids::DocId;
pub use tree::{Conflict, FileFacts, FolderView, NoFacts, RefusedName, Tree, render};

/// An error from the model: the Automerge document does not have the shape teatime
/// wrote, or Automerge refused an operation.
#[derive(Debug)]
pub enum ModelError {
    /// Automerge reported an error.
    Automerge(automerge::AutomergeError),
    /// The document lacks an object teatime expects (e.g. it has not been synced yet).
    Missing(&'static str),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Automerge(e) => write!(f, "automerge: {e}"),
            ModelError::Missing(what) => write!(f, "document has no {what} yet"),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<automerge::AutomergeError> for ModelError {
    fn from(e: automerge::AutomergeError) -> Self {
        ModelError::Automerge(e)
    }
}
