//! [`IdLines`]: index lines by record id, as [`super::cache::IndexCache`]
//! keeps them.
//!
//! A sorted vector, not a map of owned ids: a writer opened from a big
//! index takes the files' lines as they are (40,000 at 10,000 images), and
//! each line has its id where the writer renders it
//! ([`csindex::line_id`]), so only a line with it elsewhere carries a copy.
//! A change inserts or removes a handful of lines (a shift of the vector);
//! lookups are binary searches.

use storectl_storage::csindex::{self, Line};

/// Lines by id, ascending, each id once.
#[derive(Debug, Default)]
pub(super) struct IdLines {
    /// The id beside a line only when [`csindex::line_id`] does not read it.
    lines: Vec<(Option<Box<str>>, Line)>,
}

/// `line`'s id: beside it, or where the writer renders it (`{"id":"` and
/// 64 hex: checked by [`csindex::line_id`] when the line was kept without
/// it, so not again at each of the many reads of a walk or a search).
fn id_of<'a>(own: &'a Option<Box<str>>, line: &'a Line) -> &'a str {
    const AT: std::ops::Range<usize> = 7..71;
    match own {
        Some(id) => id,
        None => line
            .get(AT)
            .and_then(|id| std::str::from_utf8(id).ok())
            .unwrap_or_default(),
    }
}

/// `id` beside `line` only when the line does not have it where the
/// writer renders it.
fn entry(id: String, line: Line) -> (Option<Box<str>>, Line) {
    let own = (csindex::line_id(&line) != Some(id.as_str())).then(|| id.into_boxed_str());
    (own, line)
}

impl IdLines {
    /// Lines in ascending id order, each id once; the id given only when
    /// [`csindex::line_id`] does not read it from its line (as
    /// [`storectl_storage::IndexLines`] has them).
    pub fn from_sorted(lines: Vec<(Option<String>, Line)>) -> IdLines {
        let lines: Vec<(Option<Box<str>>, Line)> = lines
            .into_iter()
            .map(|(id, line)| match id {
                Some(id) => entry(id, line),
                None => (None, line),
            })
            .collect();
        debug_assert!(lines
            .iter()
            .all(|(own, line)| own.is_some() || csindex::line_id(line).is_some()));
        debug_assert!(lines
            .windows(2)
            .all(|w| id_of(&w[0].0, &w[0].1) < id_of(&w[1].0, &w[1].1)));
        IdLines { lines }
    }

    fn find(&self, id: &str) -> Result<usize, usize> {
        self.lines
            .binary_search_by(|(own, line)| id_of(own, line).cmp(id))
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.find(id).is_ok()
    }

    pub fn get(&self, id: &str) -> Option<&Line> {
        self.find(id).ok().map(|i| &self.lines[i].1)
    }

    /// Put `line` for `id`; the line it replaces.
    pub fn insert(&mut self, id: String, line: Line) -> Option<Line> {
        match self.find(&id) {
            Ok(i) => Some(std::mem::replace(&mut self.lines[i], entry(id, line)).1),
            Err(i) => {
                self.lines.insert(i, entry(id, line));
                None
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Line> {
        self.find(id).ok().map(|i| self.lines.remove(i).1)
    }

    /// The ids, ascending.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(|(own, line)| id_of(own, line))
    }

    /// The lines, by id.
    pub fn values(&self) -> impl Iterator<Item = &Line> {
        self.lines.iter().map(|(_, line)| line)
    }

    /// (id, line), by id.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &Line)> {
        self.lines
            .iter()
            .map(|(own, line)| (id_of(own, line), line))
    }
}

impl FromIterator<(String, Line)> for IdLines {
    /// From lines in any order (the last of an id stands).
    fn from_iter<I: IntoIterator<Item = (String, Line)>>(iter: I) -> IdLines {
        let mut lines: Vec<(Option<Box<str>>, Line)> =
            iter.into_iter().map(|(id, line)| entry(id, line)).collect();
        lines.sort_by(|a, b| id_of(&a.0, &a.1).cmp(id_of(&b.0, &b.1)));
        lines.dedup_by(|later, earlier| {
            let same = id_of(&later.0, &later.1) == id_of(&earlier.0, &earlier.1);
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        IdLines { lines }
    }
}

impl std::ops::Index<&str> for IdLines {
    type Output = Line;
    fn index(&self, id: &str) -> &Line {
        match self.get(id) {
            Some(line) => line,
            None => panic!("no line {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> String {
        format!("{n:064x}")
    }

    /// A line as the writer renders it (its id where `line_id` reads it).
    fn rendered(n: u32) -> Line {
        Line::from(format!("{{\"id\":\"{}\",\"n\":{n}}}", id(n)).into_bytes())
    }

    /// A line with its id elsewhere.
    fn other(n: u32) -> Line {
        Line::from(format!("{{\"n\":{n},\"id\":\"{}\"}}", id(n)).into_bytes())
    }

    #[test]
    fn ids_read_from_their_lines_or_kept_beside_them() {
        let mut lines = IdLines::from_sorted(vec![
            (None, rendered(1)),
            (Some(id(3)), other(3)),
            (None, rendered(5)),
        ]);
        assert_eq!(lines.keys().collect::<Vec<_>>(), [id(1), id(3), id(5)]);
        assert_eq!(lines.get(&id(3)), Some(&other(3)));
        assert!(!lines.contains_key(&id(2)));
        // Inserted in order, whichever way the id is kept.
        assert_eq!(lines.insert(id(2), other(2)), None);
        assert_eq!(lines.insert(id(4), rendered(4)), None);
        assert_eq!(lines.insert(id(5), other(5)), Some(rendered(5)));
        let keys: Vec<&str> = lines.keys().collect();
        assert_eq!(keys, [id(1), id(2), id(3), id(4), id(5)]);
        assert_eq!(lines[&id(5)], other(5));
        assert_eq!(lines.remove(&id(1)), Some(rendered(1)));
        assert_eq!(lines.remove(&id(1)), None);
        let from_iter: IdLines = lines
            .iter()
            .rev()
            .map(|(id, line)| (id.to_string(), line.clone()))
            .collect();
        assert_eq!(
            from_iter.iter().collect::<Vec<_>>(),
            lines.iter().collect::<Vec<_>>()
        );
        // The last line of an id stands.
        let twice: IdLines = [(id(7), rendered(7)), (id(7), other(7))]
            .into_iter()
            .collect();
        assert_eq!(twice.values().collect::<Vec<_>>(), [&other(7)]);
    }
}
