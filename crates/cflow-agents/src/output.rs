//! A job's output: draining a pipe into a capped capture while streaming it as events, and
//! finding the `CFLOW_RESULT` line at the end of stdout.

use crate::driver::{Captured, JobEvent, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// The prefix of the stdout line that carries a job's structured result.
///
/// If the **last line** of a job's captured stdout is `CFLOW_RESULT ` followed by a JSON object,
/// that object becomes [`JobOutcome::result`](crate::JobOutcome::result), for example
/// `echo 'CFLOW_RESULT {"tests_passed": 12}'`. A trailing newline is allowed. If the line is there
/// but is not a JSON object, the reason is in `result_error`. The line is found only in the
/// captured bytes, so a job whose stdout was truncated has no result: keep logs under the cap or
/// send them to stderr.
pub const RESULT_MARKER: &str = "CFLOW_RESULT ";

/// One read's worth. Small on purpose: every running job holds two of these, and the kernel's
/// pipe buffer (64 KiB) already absorbs bursts.
const CHUNK: usize = 16 * 1024;

/// Reads `reader` to its end into `capture`, keeping at most `cap` bytes and sending each kept
/// chunk to `events` in order. Bytes past the cap are read and dropped, so the writer never
/// blocks on a full pipe and memory stays at `cap` plus one chunk however much is written; the
/// first of them marks the capture truncated and sends one [`JobEvent::Truncated`].
///
/// The capture is filled in place, so the caller keeps everything read so far even if it stops
/// waiting for this future (a pipe held open by an escaped process).
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    stream: OutputStream,
    cap: usize,
    capture: &mut Captured,
    events: &mpsc::Sender<JobEvent>,
) {
    let Some(mut reader) = reader else { return };
    let mut buf = vec![0u8; CHUNK];
    // A closed channel means nobody is listening; the capture still matters.
    let mut listening = true;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                // Dropping the reader turns further writes into EPIPE for the job rather than
                // letting it block on a pipe nobody drains.
                tracing::warn!(stream = stream.as_str(), %err, "reading job output failed");
                break;
            }
        };
        capture.total_bytes += n as u64;
        capture.tail.extend_from_slice(&buf[..n]);
        if capture.tail.len() > 2 * crate::driver::TAIL_BYTES {
            let cut = capture.tail.len() - crate::driver::TAIL_BYTES;
            capture.tail.drain(..cut);
        }
        let keep = n.min(cap.saturating_sub(capture.bytes.len()));
        if keep > 0 {
            capture.bytes.extend_from_slice(&buf[..keep]);
            if listening {
                let chunk = buf[..keep].to_vec();
                let event = match stream {
                    OutputStream::Stdout => JobEvent::Stdout(chunk),
                    OutputStream::Stderr => JobEvent::Stderr(chunk),
                };
                listening = events.send(event).await.is_ok();
            }
        }
        if keep < n && !capture.truncated {
            capture.truncated = true;
            if listening {
                listening = events.send(JobEvent::Truncated { stream }).await.is_ok();
            }
        }
    }
}

/// Finds the result in captured stdout: `Ok(None)` when the last line carries no marker,
/// `Err(reason)` when it carries one that is unusable.
pub(crate) fn parse_result(stdout: &Captured) -> Result<Option<serde_json::Value>, String> {
    if stdout.truncated {
        return Ok(None);
    }
    let text = stdout.bytes.strip_suffix(b"\n").unwrap_or(&stdout.bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let last = match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[i + 1..],
        None => text,
    };
    let Some(json) = last.strip_prefix(RESULT_MARKER.as_bytes()) else {
        return Ok(None);
    };
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(Some(value)),
        Ok(_) => Err("the CFLOW_RESULT line holds JSON that is not an object".to_string()),
        Err(err) => Err(format!("the CFLOW_RESULT line is not valid JSON: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn captured(text: &str) -> Captured {
        Captured {
            bytes: text.as_bytes().to_vec(),
            truncated: false,
            total_bytes: text.len() as u64,
            tail: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn finds_the_result_on_the_last_line() {
        let out = captured("building\nCFLOW_RESULT {\"ok\":true,\"n\":2}\n");
        assert_eq!(parse_result(&out), Ok(Some(json!({"ok": true, "n": 2}))));
        let crlf = captured("CFLOW_RESULT {\"ok\":1}\r\n");
        assert_eq!(parse_result(&crlf), Ok(Some(json!({"ok": 1}))));
    }

    #[test]
    fn ignores_a_marker_that_is_not_last() {
        let out = captured("CFLOW_RESULT {\"ok\":true}\nmore logs\n");
        assert_eq!(parse_result(&out), Ok(None));
        assert_eq!(parse_result(&captured("")), Ok(None));
    }

    #[test]
    fn reports_an_unusable_marker_line() {
        let err = parse_result(&captured("CFLOW_RESULT [1,2]\n")).unwrap_err();
        assert!(err.contains("not an object"), "{err}");
        let err = parse_result(&captured("CFLOW_RESULT {oops\n")).unwrap_err();
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn truncated_output_has_no_result() {
        let mut out = captured("CFLOW_RESULT {\"ok\":true}\n");
        out.truncated = true;
        assert_eq!(parse_result(&out), Ok(None));
    }
}
