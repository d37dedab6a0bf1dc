//! History commands (`log`, `show`, `diff`, `restore`, `blame`, `merges`): read from the
//! file documents, which keep every change of every text file (see
//! [`teatime_crdt::history`]).

use teatime_crdt::history::{self, FileChange};

use super::*;

/// A point in a file's history, as given on the command line.
enum At {
    Change(ChangeHash),
    Time(i64),
}

impl Replica {
    /// The entry a path names: the file shown there, or else a deleted file that was last
    /// there (so deleted files can be found and restored).
    fn entry_at(&mut self, path: &str) -> Result<DocId, String> {
        if let Some(&(id, kind)) =
            self.tree.get(&mut self.folder, &mut self.files, &self.store).by_path.get(path)
        {
            return match kind {
                EntryKind::File => Ok(id),
                EntryKind::Dir => Err(format!("{path} is a directory")),
            };
        }
        let entries = self.tree.entries.clone();
        entries
            .iter()
            .filter(|(_, e)| e.kind == EntryKind::File && !e.deletions.is_empty())
            .find(|(id, _)| self.last_path(**id).as_deref() == Some(path))
            .map(|(id, _)| *id)
            .ok_or_else(|| format!("no file {path} (now or deleted)"))
    }

    /// Where an entry was last, following its parents' locations (deleted ones too).
    fn last_path(&self, id: DocId) -> Option<String> {
        let entries = &self.tree.entries;
        let mut parts = Vec::new();
        let mut cur = Some(id);
        while let Some(at) = cur {
            if parts.len() > 256 {
                return None; // a cycle
            }
            let e = entries.get(&at)?;
            let loc = e.any_loc();
            parts.push(loc.name.clone());
            cur = loc.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    fn member_name(&self, actor: &automerge::ActorId) -> String {
        let members = self.folder.members();
        teatime_crdt::ids::member_of_actor(actor)
            .map(|id| members.get(&id).map(|m| m.name.clone()).unwrap_or(id))
            .unwrap_or_else(|| "unknown".into())
    }

    fn change_json(&self, c: &FileChange, path: &str) -> serde_json::Value {
        json!({
            "path": path,
            "change": c.hash.to_string(),
            "time_ms": c.time_ms,
            "time": iso_time(c.time_ms),
            "peer": self.member_name(&c.actor),
            "added": c.added,
            "removed": c.removed,
            "merged": !c.concurrent_with.is_empty(),
            "concurrent_with": c.concurrent_with.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        })
    }

    /// Every file the folder shows, with its path.
    fn shown_files(&mut self) -> Vec<(DocId, String)> {
        let tree = self.tree.get(&mut self.folder, &mut self.files, &self.store);
        tree.by_path
            .iter()
            .filter(|(_, (_, k))| *k == EntryKind::File)
            .map(|(p, (id, _))| (*id, p.clone()))
            .collect()
    }

    /// `teatime log`: a file's changes, or every file's, newest first.
    pub(super) fn log(&mut self, path: Option<&str>) -> Result<serde_json::Value, String> {
        let ids: Vec<(DocId, String)> = match path {
            Some(p) => vec![(self.entry_at(p)?, p.to_string())],
            None => self.shown_files(),
        };
        let mut out = Vec::new();
        for (id, path) in ids {
            let Some(file) = self.files.get(&self.store, id) else { continue };
            for c in history::changes(file) {
                out.push((c.time_ms, self.change_json(&c, &path)));
            }
        }
        out.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
        Ok(json!(out.into_iter().map(|(_, v)| v).collect::<Vec<_>>()))
    }

    /// `teatime log --deleted`: files deleted, where they were, by whom, when.
    pub(super) fn deleted(&mut self) -> serde_json::Value {
        self.tree.get(&mut self.folder, &mut self.files, &self.store);
        let members = self.folder.members();
        let entries = self.tree.entries.clone();
        let mut out: Vec<serde_json::Value> = entries
            .iter()
            .filter(|(id, e)| {
                e.kind == EntryKind::File && !e.deletions.is_empty() && self.tree.tree.path_of(**id).is_none()
            })
            .map(|(id, e)| {
                let d = &e.deletions[0];
                json!({
                    "path": self.last_path(*id).unwrap_or_default(),
                    "deleted_by": members.get(&d.stamp.by).map_or(d.stamp.by.clone(), |m| m.name.clone()),
                    "time_ms": d.stamp.ms,
                    "time": iso_time(d.stamp.ms as i64),
                })
            })
            .collect();
        out.sort_by_key(|v| std::cmp::Reverse(v["time_ms"].as_u64()));
        json!(out)
    }

    fn parse_at(&mut self, id: DocId, at: &str) -> Result<At, String> {
        let file = self.files.get(&self.store, id).ok_or(
            "this file has no text history (binary files keep losing versions in .teatime/versions)",
        )?;
        if at.len() >= 6
            && at.chars().all(|c| c.is_ascii_hexdigit())
            && let Some(h) = history::find_change(file, at)
        {
            return Ok(At::Change(h));
        }
        parse_time(at).map(At::Time).ok_or_else(|| {
            format!("{at:?} is neither a change (a hash prefix from `teatime log`) nor a time (RFC 3339 like 2026-11-21T14:00:00Z, ms since the epoch, or 10m/2h/3d ago)")
        })
    }

    /// The text of a file at a point of its history.
    fn text_at(&mut self, id: DocId, at: &str) -> Result<String, String> {
        let at = self.parse_at(id, at)?;
        let file = self.files.get(&self.store, id).ok_or("no text history")?;
        let heads = match at {
            At::Change(h) => vec![h],
            At::Time(t) => history::heads_at_time(file, t),
        };
        if heads.is_empty() {
            return Err("the file did not exist yet then".into());
        }
        file.text_at(&heads).ok_or_else(|| "that version is not here".into())
    }

    /// `teatime show` (`now` is the current text, as recorded: not necessarily the disk's).
    pub(super) fn show(&mut self, path: &str, at: &str) -> Result<serde_json::Value, String> {
        let id = self.entry_at(path)?;
        if at == "now" {
            return Ok(json!(self.files.get(&self.store, id).and_then(|f| f.text()).ok_or("no text")?));
        }
        Ok(json!(self.text_at(id, at)?))
    }

    /// `teatime diff`: a unified diff between two points (`now` is the current text).
    pub(super) fn diff(&mut self, path: &str, a: &str, b: &str) -> Result<serde_json::Value, String> {
        let id = self.entry_at(path)?;
        let mut version = |at: &str| -> Result<String, String> {
            if at == "now" {
                return self
                    .files
                    .get(&self.store, id)
                    .and_then(|f| f.text())
                    .ok_or_else(|| "no text".into());
            }
            self.text_at(id, at)
        };
        let (old, new) = (version(a)?, version(b)?);
        Ok(json!(history::unified_diff(&old, &new, &format!("{path}@{a}"), &format!("{path}@{b}"))))
    }

    /// `teatime restore`: the past version becomes the current one, as a new change that
    /// syncs like an edit (and brings a deleted file back).
    pub(super) fn restore(&mut self, path: &str, at: &str) -> Result<(), String> {
        let id = self.entry_at(path)?;
        let text = self.text_at(id, at)?;
        let file = self.files.get(&self.store, id).ok_or("no text history")?;
        file.ingest(&text, Instant::now() + INGEST_BUDGET, now_ms() as i64).map_err(|e| e.to_string())?;
        self.dirty.insert(id);
        self.remote_changed.insert(id);
        if self.folder.entry(id).is_some_and(|e| !e.deletions.is_empty()) {
            self.folder.undelete(id).map_err(|e| e.to_string())?;
            self.folder.commit_at(now_ms() as i64);
            self.dirty.insert(self.id.folder);
            self.remote_changed.insert(self.id.folder);
        }
        Ok(())
    }

    /// `teatime blame`.
    pub(super) fn blame(&mut self, path: &str) -> Result<serde_json::Value, String> {
        let id = self.entry_at(path)?;
        let file = self.files.get(&self.store, id).ok_or("no text history")?;
        let times: HashMap<ChangeHash, (i64, automerge::ActorId)> = file
            .doc_mut()
            .get_changes(&[])
            .iter()
            .map(|c| (c.hash(), (c.timestamp(), c.actor_id().clone())))
            .collect();
        let lines = history::blame(file);
        Ok(json!(
            lines
                .into_iter()
                .map(|(line, by)| {
                    let (time, actor) = by.and_then(|h| times.get(&h).cloned()).unzip();
                    json!({
                        "line": line,
                        "change": by.map(|h| h.to_string()),
                        "time": time.map(iso_time),
                        "peer": actor.map(|a| self.member_name(&a)),
                    })
                })
                .collect::<Vec<_>>()
        ))
    }

    /// `teatime merges`: files where concurrent edits were merged, when, and by whom.
    pub(super) fn merges(&mut self) -> serde_json::Value {
        let mut out = Vec::new();
        for (id, path) in self.shown_files() {
            let Some(file) = self.files.get(&self.store, id) else { continue };
            let changes = history::changes(file);
            let concurrent: Vec<&FileChange> =
                changes.iter().filter(|c| !c.concurrent_with.is_empty()).collect();
            if concurrent.is_empty() {
                continue;
            }
            let mut peers: Vec<String> = concurrent.iter().map(|c| self.member_name(&c.actor)).collect();
            peers.sort();
            peers.dedup();
            let last = concurrent.iter().map(|c| c.time_ms).max().unwrap_or(0);
            out.push(json!({
                "path": path,
                "concurrent_changes": concurrent.len(),
                "peers": peers,
                "last_time": iso_time(last),
            }));
        }
        json!(out)
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for ms since the epoch.
pub(crate) fn iso_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// A time given on the command line: RFC 3339 in UTC (`2026-11-21T14:00:00Z`, seconds
/// and `Z` optional), ms since the epoch, or a span ago (`30s`, `10m`, `2h`, `3d`).
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: i64 = s[..s.len() - 1].parse().ok()?;
        let secs = match unit {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => n * 86_400,
        };
        return Some(now_ms() as i64 - secs * 1000);
    }
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<f64>().ok());
    let (hh, mm) = (t.next()??, t.next().flatten().unwrap_or(0.0));
    let ss = t.next().flatten().unwrap_or(0.0);
    let days = days_from_civil(y, m, day);
    Some(days * 86_400_000 + ((hh * 3600.0 + mm * 60.0 + ss) * 1000.0) as i64)
}

// Howard Hinnant's civil-calendar conversions (public domain algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        let t = parse_time("2026-11-21T14:05:09Z").unwrap();
        assert_eq!(iso_time(t), "2026-11-21T14:05:09.000Z");
        assert_eq!(parse_time("2024-02-29").map(iso_time).unwrap(), "2024-02-29T00:00:00.000Z");
        assert!(parse_time("5m").unwrap() < now_ms() as i64);
        assert_eq!(parse_time("nonsense"), None);
    }
}
