//! The file tools of the workbench — `read_file`, `write_file`, `edit_file`, `list_files`,
//! `search_files` — on top of the confined operations of [`fs`](super::fs). Each takes the
//! model's JSON input and returns the text the model sees, or an error message it can act on.

use super::TOOL_OUTPUT_CAP;
use super::fs::{self as wfs, Confined, Entry, Rel};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadInput {
    path: String,
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteInput {
    path: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditInput {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListInput {
    path: Option<String>,
    #[serde(default)]
    recursive: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchInput {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(input: &Value) -> Result<T, String> {
    T::deserialize(input).map_err(|e| format!("invalid input: {e} — see the tool's schema"))
}

/// Reads a text file: refuses binary content.
fn read_text(files: &Confined, rel: &Rel) -> Result<String, String> {
    let bytes = files.read(rel)?;
    if wfs::is_binary(&bytes) {
        return Err(format!(
            "'{}' is a binary file (it contains NUL bytes) — file tools read text only; use \
             run_command (e.g. xxd or file) to inspect it",
            rel.shown()
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn read_file(files: &Confined, input: &Value) -> Result<String, String> {
    let input: ReadInput = parse(input)?;
    let rel = files.rel(&input.path)?;
    let text = read_text(files, &rel)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let total = lines.len();
    let first = input.offset.unwrap_or(1);
    if first == 0 {
        return Err("offset is 1-based — give 1 for the first line".into());
    }
    if input.limit == Some(0) {
        return Err("limit must be at least 1".into());
    }
    if total == 0 {
        return Ok(format!("[{} is empty]", rel.shown()));
    }
    if first > total {
        return Err(format!(
            "offset {first} is past the end: '{}' has {total} lines",
            rel.shown()
        ));
    }
    let wanted = input.limit.unwrap_or(usize::MAX).min(total - first + 1);
    // Room for the note that says where the text continues.
    let budget = TOOL_OUTPUT_CAP - 300;
    let mut out = String::new();
    let mut shown = 0;
    let mut cut_line = None;
    for line in &lines[first - 1..first - 1 + wanted] {
        if out.len() + line.len() > budget {
            if shown == 0 {
                let keep = floor_char_boundary(line, budget);
                out.push_str(&line[..keep]);
                cut_line = Some((line.len(), keep));
                shown = 1;
            }
            break;
        }
        out.push_str(line);
        shown += 1;
    }
    let last = first + shown - 1;
    if let Some((len, keep)) = cut_line {
        out.push_str(&format!(
            "\n[line {first} is {len} bytes; only its first {keep} are shown — use run_command \
             (e.g. cut or fold) to see the rest]"
        ));
    }
    if first > 1 || last < total || cut_line.is_some() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("[lines {first}-{last} of {total}"));
        if last < total {
            out.push_str(&format!("; read on with offset={}", last + 1));
        }
        out.push(']');
    }
    Ok(out)
}

pub(crate) fn write_file(files: &Confined, input: &Value) -> Result<String, String> {
    let input: WriteInput = parse(input)?;
    let rel = files.rel(&input.path)?;
    let n = files.write(&rel, input.content.as_bytes())?;
    Ok(format!("wrote {n} bytes to {}", rel.shown()))
}

pub(crate) fn edit_file(files: &Confined, input: &Value) -> Result<String, String> {
    let input: EditInput = parse(input)?;
    let rel = files.rel(&input.path)?;
    if input.old_string.is_empty() {
        return Err(
            "old_string is empty — give the exact text to replace (use write_file to create a file)"
                .into(),
        );
    }
    if input.old_string == input.new_string {
        return Err("old_string and new_string are the same: nothing to change".into());
    }
    let text = read_text(files, &rel)?;
    let count = text.matches(&input.old_string).count();
    let shown = rel.shown();
    match count {
        0 => {
            return Err(format!(
                "old_string was not found in '{shown}' — read the file and copy the text \
                 exactly, whitespace and indentation included"
            ));
        }
        1 => {}
        n if !input.replace_all => {
            return Err(format!(
                "old_string occurs {n} times in '{shown}' — add surrounding context to make it \
                 unique, or set replace_all to replace every occurrence"
            ));
        }
        _ => {}
    }
    let new = text.replace(&input.old_string, &input.new_string);
    files.write(&rel, new.as_bytes())?;
    Ok(format!(
        "replaced {count} occurrence{} in {shown}",
        if count == 1 { "" } else { "s" }
    ))
}

pub(crate) fn list_files(files: &Confined, input: &Value) -> Result<String, String> {
    let input: ListInput = parse(input)?;
    let rel = files.rel(input.path.as_deref().unwrap_or("."))?;
    if !files.is_dir(&rel)? {
        return Err(format!(
            "'{}' is not a directory — use read_file to read a file",
            rel.shown()
        ));
    }
    let mut lines = Vec::new();
    let mut capped = false;
    let note = files.walk(&rel, input.recursive, &mut |e: &Entry<'_>| {
        if lines.len() >= wfs::MAX_LIST_ENTRIES {
            capped = true;
            return false;
        }
        lines.push(match e.kind {
            rustix::fs::FileType::Directory => format!("{}/", e.rel),
            rustix::fs::FileType::Symlink => {
                format!("{} -> {}", e.rel, wfs::link_target(e.dir, e.name))
            }
            _ => e.rel.to_string(),
        });
        true
    })?;
    if lines.is_empty() {
        return Ok(format!("[{} is empty]", rel.shown()));
    }
    let mut out = lines.join("\n");
    if capped {
        out.push_str(&format!(
            "\n[the listing stopped at {} entries — list a subdirectory, or use search_files]",
            wfs::MAX_LIST_ENTRIES
        ));
    }
    if let Some(note) = note {
        out.push_str(&format!("\n[{note}]"));
    }
    Ok(out)
}

pub(crate) fn search_files(files: &Confined, input: &Value) -> Result<String, String> {
    let input: SearchInput = parse(input)?;
    let re = regex::RegexBuilder::new(&input.pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid pattern: {e}"))?;
    let glob = input.glob.as_deref().map(wfs::glob_regex).transpose()?;
    let glob_on_path = input.glob.as_deref().is_some_and(|g| g.contains('/'));
    let rel = files.rel(input.path.as_deref().unwrap_or("."))?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut full = false;
    let mut too_big = 0usize;
    let mut search = |text: &[u8], shown: &str, out: &mut Vec<String>| -> bool {
        if wfs::is_binary(text) {
            return true;
        }
        for (i, line) in String::from_utf8_lossy(text).lines().enumerate() {
            if !re.is_match(line) {
                continue;
            }
            let cut: String = line.chars().take(wfs::MAX_MATCH_LINE_CHARS).collect();
            let hit = format!("{shown}:{}: {cut}", i + 1);
            bytes += hit.len() + 1;
            if out.len() >= wfs::MAX_MATCHES || bytes > TOOL_OUTPUT_CAP - 300 {
                full = true;
                return false;
            }
            out.push(hit);
        }
        true
    };
    let note = if files.is_dir(&rel)? {
        let start = if rel.shown() == "." {
            String::new()
        } else {
            format!("{}/", rel.shown())
        };
        files.walk(&rel, true, &mut |e: &Entry<'_>| {
            if e.kind != rustix::fs::FileType::RegularFile {
                return true;
            }
            if let Some(g) = &glob {
                let subject = if glob_on_path {
                    e.rel.strip_prefix(start.as_str()).unwrap_or(e.rel)
                } else {
                    e.name
                };
                if !g.is_match(subject) {
                    return true;
                }
            }
            match wfs::read_for_search(e.dir, e.name) {
                Some(Ok(text)) => search(&text, e.rel, &mut out),
                Some(Err(_)) => {
                    too_big += 1;
                    true
                }
                None => true,
            }
        })?
    } else {
        let text = files.read(&rel)?;
        search(&text, &rel.shown(), &mut out);
        None
    };
    let mut text = if out.is_empty() {
        "no matches".to_string()
    } else {
        out.join("\n")
    };
    if full {
        text.push_str(&format!(
            "\n[stopped after {} matching lines — narrow the pattern, path or glob]",
            out.len()
        ));
    }
    if too_big > 0 {
        text.push_str(&format!(
            "\n[{too_big} file(s) over {} bytes not searched — use run_command with grep for those]",
            wfs::MAX_SEARCH_FILE_BYTES
        ));
    }
    if let Some(note) = note {
        text.push_str(&format!("\n[{note}]"));
    }
    Ok(text)
}

/// The largest index `<= at` that is a character boundary of `s`.
pub(crate) fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
