//! Who may change what: member roles, checked on both ends.
//!
//! Roles are recorded in the folder document by the owner:
//!
//! | role     | may                                                        |
//! |----------|------------------------------------------------------------|
//! | `owner`  | everything, including setting roles                        |
//! | `writer` | create, edit, rename, delete; settings; not roles          |
//! | `editor` | change the content of existing files only                  |
//! | `reader` | nothing: receives only                                     |
//!
//! A peer's own client holds back what its role does not allow and puts the folder back
//! ([`allows_local`]). Every other peer refuses such changes when they arrive over that
//! peer's session ([`check_folder_change`], [`allows_file_change`]): they are never
//! applied, so they are never relayed either. Changes are judged by the session they
//! come on; honest peers only ever hold allowed changes, so what they relay is allowed.
//! A `revoked` member has no rights at all, and neither has anyone not recorded.

use std::collections::BTreeMap;

use teatime_crdt::{DocId, Entry, FolderDoc};

use crate::scan::LocalOp;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Cut off by the owner (`teatime revoke`): no sessions, no changes.
    Revoked,
    /// Receives only.
    Reader,
    /// Changes the content of existing files.
    Editor,
    /// Changes anything but roles.
    Writer,
    /// Changes anything.
    Owner,
}

impl Role {
    /// Parses a role; unknown text (a newer version's role, a malformed record) is the
    /// least privileged role, never a more privileged one.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "writer" => Some(Role::Writer),
            "editor" => Some(Role::Editor),
            "reader" => Some(Role::Reader),
            "revoked" => Some(Role::Revoked),
            _ => None,
        }
    }

    /// The role's text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Writer => "writer",
            Role::Editor => "editor",
            Role::Reader => "reader",
            Role::Revoked => "revoked",
        }
    }

    /// The role of `member` in `folder`. Someone not recorded as a member has no rights.
    pub fn of(folder: &FolderDoc, member: &str) -> Role {
        match folder.members().get(member) {
            Some(m) => Role::parse(&m.role).unwrap_or(Role::Reader),
            None => Role::Revoked,
        }
    }

    /// The role `member` had when it wrote a change dated `at_ms` (its own clock): the
    /// role before the owner's last change of it for earlier changes (they were made
    /// with that right), the current one after. Someone not recorded has no rights.
    pub fn at(members: &BTreeMap<String, teatime_crdt::Member>, member: &str, at_ms: i64) -> Role {
        match members.get(member) {
            None => Role::Revoked,
            Some(m) if at_ms < m.since_ms && !m.was.is_empty() => Role::parse(&m.was).unwrap_or(Role::Reader),
            Some(m) => Role::parse(&m.role).unwrap_or(Role::Reader),
        }
    }

    /// Whether the role may write the folder document's tree (create, rename, delete)
    /// and settings.
    pub fn writes_tree(self) -> bool {
        self >= Role::Writer
    }
}

/// Whether this peer, with `role`, may publish a local change.
pub fn allows_local(role: Role, op: &LocalOp) -> bool {
    match role {
        Role::Owner | Role::Writer => true,
        Role::Editor => {
            matches!(op, LocalOp::Edit { .. } | LocalOp::EditBinary { .. } | LocalOp::Touch { .. })
        }
        Role::Reader | Role::Revoked => matches!(op, LocalOp::Touch { .. }),
    }
}

/// Whether a peer with `role` may change the file document `doc` (its content): only
/// documents of files the folder already has.
pub fn allows_file_change(role: Role, doc: DocId, entries: &BTreeMap<DocId, Entry>) -> bool {
    match role {
        Role::Owner | Role::Writer => true,
        Role::Editor => entries.get(&doc).is_some_and(|e| e.deletions.is_empty()),
        Role::Reader | Role::Revoked => false,
    }
}

/// Checks the folder document after a peer with `role` changed it (`after`) against how
/// it was (`before`). Returns what was not allowed.
pub fn check_folder_change(role: Role, before: &FolderDoc, after: &FolderDoc) -> Result<(), String> {
    if role == Role::Owner {
        return Ok(());
    }
    if role <= Role::Reader {
        return Err(format!("a {} may not change the folder", role.as_str()));
    }
    let (mb, ma) = (before.members(), after.members());
    let roles = |m: &BTreeMap<String, teatime_crdt::Member>| -> Vec<(String, String)> {
        m.iter().map(|(id, m)| (id.clone(), m.role.clone())).collect()
    };
    // A new member's record (admission) carries a role too: a writer admits writers and
    // readers (what its tickets grant); anything else, and any change of an existing role
    // (a revocation included), is the owner's.
    for (id, m) in &ma {
        match mb.get(id) {
            Some(old) if (&old.role, &old.was, old.since_ms) != (&m.role, &m.was, m.since_ms) => {
                return Err(format!("only the owner sets roles ({id})"));
            }
            None if m.role != Role::Writer.as_str() && m.role != Role::Reader.as_str() => {
                return Err(format!("only the owner admits a member as {}", m.role));
            }
            _ => {}
        }
    }
    if role == Role::Writer {
        return Ok(());
    }
    // Editor: the same members, settings and tree; only content (binary versions,
    // executable bits) may differ.
    if roles(&mb) != roles(&ma) || mb.len() != ma.len() {
        return Err("an editor may not change members".into());
    }
    for key in [
        "conflict_strategy",
        crate::replica::SYNC_EXEC_BIT,
        crate::replica::TEXT_LIMIT,
        crate::replica::JOIN_APPROVAL,
    ] {
        if before.setting(key) != after.setting(key) {
            return Err("an editor may not change settings".into());
        }
    }
    let (eb, ea) = (before.entries(), after.entries());
    if eb.len() != ea.len() {
        return Err("an editor may not create files".into());
    }
    for (id, a) in &ea {
        let Some(b) = eb.get(id) else { return Err("an editor may not create files".into()) };
        if a.kind != b.kind || a.created != b.created || a.locs != b.locs || a.deletions != b.deletions {
            return Err("an editor may not create, rename or delete".into());
        }
    }
    Ok(())
}
