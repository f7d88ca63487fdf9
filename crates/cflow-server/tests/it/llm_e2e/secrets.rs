//! The tenant's secrets never come back from the API after a model loop echoed them
//! everywhere it could (its answer, a file, a command's output, memory, streamed text): task
//! JSON, logs, artifacts, memory, events, the ledger, the provider settings, the secret list
//! and the server's own log lines are searched for the values.

use super::*;

/// Everything the server logs on the test's thread, as text (every level, span fields too).
///
/// Installed with `tracing::subscriber::set_default` under a current-thread runtime, so the
/// server's tasks (HTTP, scheduler, local pool, model loop) log into it; what runs on blocking
/// threads (file tools, sandbox set-up) is not captured.
#[derive(Clone, Default)]
struct Logs {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    spans: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl Logs {
    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut text = self.text.lock().unwrap();
        text.push_str(&format!("span {}", span.metadata().name()));
        span.record(&mut Fields(&mut text));
        text.push('\n');
        let n = self
            .spans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::span::Id::from_u64(n + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut text = self.text.lock().unwrap();
        values.record(&mut Fields(&mut text));
        text.push('\n');
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.text.lock().unwrap();
        let m = event.metadata();
        text.push_str(&format!("{} {}", m.level(), m.target()));
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

// A current-thread runtime, so that the server's tasks log into the test's subscriber.
#[tokio::test]
async fn secrets_never_come_back_from_the_api() {
    // Two live dispatchers: with one, tracing caches each callsite's interest from the
    // dispatcher of the thread that reaches it first, so a callsite first reached by another
    // test's thread (which has none) would stay off for this one.
    let _second = tracing::Dispatch::new(Logs::default());
    let logs = Logs::default();
    let _logging = tracing::subscriber::set_default(logs.clone());
    let both = format!("key {PROVIDER_KEY} and token {OTHER_VALUE}");
    let mock = MockLlm::with_turns([
        Turn::tool_use(
            "write_file",
            json!({"path": "leak.txt", "content": format!("{both}\n")}),
        ),
        Turn::tool_use(
            "run_command",
            json!({"command": format!(
                "cat leak.txt; echo {OTHER_VALUE}; echo {PROVIDER_KEY} >&2; \
                 yes 0123456789 | head -n 40000 > big.txt; echo {PROVIDER_KEY} >> big.txt"
            )}),
        ),
        Turn::tool_use(
            "memory_put",
            json!({"key": "leak", "value": {"note": both}}),
        ),
        Turn::text(format!("Done: {both}")),
    ])
    .await;
    let server = TestServer::start_sqlite().await;
    let (tenant, admin) = tenant_on(&server, "acme", &mock).await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "DEPLOY_TOKEN", OTHER_VALUE).await;
    let (swarm, _) = llm_swarm(&api).await;
    let task = submit_prompt(
        &api,
        &swarm,
        json!({"prompt": "Leak everything.", "artifacts": ["leak.txt", "big.txt"],
               "env": {"PATH": PATH}}),
    )
    .await;
    let t = api.wait_task(&task, &ENDED).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    // The model did get the values back (the loop works on the real data)...
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);
    assert!(result_text(&tool_results(&reqs[2])[0]).contains(OTHER_VALUE));

    // ...and the API serves none of it.
    let mut seen: Vec<(String, String)> = Vec::new();
    let superadmin = Api::new(&server, &server.admin_token);
    for path in [
        format!("/api/v1/tasks/{task}"),
        "/api/v1/tasks?limit=1000".to_string(),
        format!("/api/v1/tasks/{task}/logs"),
        format!("/api/v1/tasks/{task}/artifacts"),
        format!("/api/v1/memory/swarm%2F{swarm}/leak"),
        format!("/api/v1/memory/swarm%2F{swarm}"),
        format!("/api/v1/tenants/{tenant}/llm"),
        "/api/v1/secrets".to_string(),
        "/api/v1/audit?limit=1000".to_string(),
        "/api/v1/cost?by=task".to_string(),
    ] {
        let resp = api.get(&path).await;
        assert_eq!(resp.status(), 200, "{path}");
        seen.push((path, resp.text().await.unwrap()));
    }
    let all_audit = superadmin.get("/api/v1/audit?limit=1000").await;
    seen.push(("superadmin audit".into(), all_audit.text().await.unwrap()));
    let arts = artifacts(&api, &task).await;
    let names: Vec<&str> = arts.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"transcript.jsonl"), "{names:?}");
    // big.txt (440 KB) is masked off the async threads.
    assert!(
        names.contains(&"leak.txt") && names.contains(&"big.txt"),
        "{names:?}"
    );
    for (name, _, sha) in &arts {
        let bytes = artifact(&api, &task, sha).await;
        seen.push((
            format!("artifact {name}"),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }
    // Every event of the tenant, replayed from the start of the ring.
    let mut replay = SseReader::open(&api, "", Some("0-0")).await;
    let events = replay
        .until(|e| e.event == "task.succeeded" && e.data["subject"] == task.as_str())
        .await;
    assert_eq!(events[0].event, "reset");
    assert!(
        events.iter().any(|e| e.event == "task.agent"),
        "the replay holds the loop's steps"
    );
    for e in &events {
        seen.push((format!("event {}", e.event), e.data.to_string()));
    }
    drop(replay);

    // The server's own log lines of the run (the model loop's calls included).
    let logged = logs.text();
    assert!(
        logged.contains("cflow_server::"),
        "the server logged nothing: {logged}"
    );
    seen.push(("the server's log".into(), logged));

    for (what, text) in &seen {
        for value in [PROVIDER_KEY, OTHER_VALUE] {
            assert!(!text.contains(value), "{what} shows a secret: {text}");
        }
    }
    // Masked, not dropped: the redactions are where the values were.
    let text_of = |what: &str| {
        seen.iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("{what}"))
            .1
            .clone()
    };
    for what in [
        "artifact leak.txt",
        "artifact big.txt",
        "artifact transcript.jsonl",
        &format!("/api/v1/tasks/{task}"),
        &format!("/api/v1/memory/swarm%2F{swarm}/leak"),
    ] {
        assert!(
            text_of(what).contains("[REDACTED"),
            "{what}: {}",
            text_of(what)
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_streamed_slowly_is_not_pieced_together_from_the_events() {
    // The answer streams in pieces of 8 characters, 40 ms apart: the driver's text events
    // (flushed every 100 ms) each carry a few pieces, so a secret spans several of them.
    let answer = format!("The token is {OTHER_VALUE} and the key is {PROVIDER_KEY}, bye.");
    let mock =
        MockLlm::with_turns([Turn::text(answer).slow(std::time::Duration::from_millis(40))]).await;
    let server = TestServer::start_sqlite().await;
    let (_, admin) = tenant_on(&server, "acme", &mock).await;
    let api = Api::new(&server, &admin);
    put_secret(&api, "DEPLOY_TOKEN", OTHER_VALUE).await;
    let (swarm, _) = llm_swarm(&api).await;
    let mut stream = SseReader::open(&api, "?types=task.", None).await;
    let task = submit_prompt(&api, &swarm, json!({"prompt": "Say the token."})).await;
    let events = events_until_end(&mut stream, &task).await;
    let texts: Vec<String> = agent_steps(&events, &task)
        .into_iter()
        .filter(|(k, _)| k == "assistant_text")
        .map(|(_, d)| d["text"].as_str().unwrap().to_string())
        .collect();
    assert!(texts.len() > 1, "the answer came in one event: {texts:?}");
    let joined = texts.concat();
    for value in [PROVIDER_KEY, OTHER_VALUE] {
        assert!(!joined.contains(value), "{joined}");
    }
    assert!(joined.contains("[REDACTED"), "{joined}");
    assert!(joined.ends_with("bye."), "{joined}");
    let t = api.task(&task).await;
    assert_eq!(t["state"], "succeeded", "{t:#}");
    drop(stream);
    server.shutdown().await;
}
