//! `cflow tenant llm show | set` against a real server, and `[[server.llm.providers]]` checked
//! when the configuration is read.

use crate::harness::{Server, cflow_in, run};

#[test]
fn tenant_llm_providers_are_set_shown_and_cleared() {
    let server = Server::start();
    let shown = run(server.cflow().args(["tenant", "llm", "show"]));
    assert!(shown.ok().contains("no providers of its own"), "{shown:?}");

    let set = run(server.cflow().args([
        "--output",
        "json",
        "tenant",
        "llm",
        "set",
        "--provider",
        "name=main,kind=anthropic,key_secret=ANTHROPIC_KEY",
        "--provider",
        "name=local,kind=openai,base_url=http://localhost:11434/v1,model=llama3.1",
    ]))
    .json();
    assert_eq!(set["source"], "tenant", "{set}");
    assert_eq!(
        set["providers"][0]["api_key_secret"], "ANTHROPIC_KEY",
        "{set}"
    );
    assert_eq!(set["providers"][1]["model"], "llama3.1", "{set}");
    let shown = run(server.cflow().args(["tenant", "llm", "show", "default"]));
    let text = shown.ok();
    assert!(text.contains("the tenant's own providers"), "{text}");
    assert!(
        text.contains("main  anthropic") && text.contains("key: secret ANTHROPIC_KEY"),
        "{text}"
    );

    // A raw key in a file is refused with the way to do it; the providers stay as they were.
    let file = server.work().join("providers.json");
    std::fs::write(
        &file,
        r#"{"providers": [{"name": "m", "kind": "anthropic", "api_key": "sk-ant-raw"}]}"#,
    )
    .unwrap();
    let bad = run(server
        .cflow()
        .args(["tenant", "llm", "set", "--file"])
        .arg(&file));
    let err = bad.fails();
    assert!(err.contains("cflow secret set NAME"), "{bad:?}");
    assert!(!err.contains("sk-ant-raw"), "{bad:?}");
    let bad = run(server.cflow().args([
        "tenant",
        "llm",
        "set",
        "--provider",
        "name=x,kind=openai,api_key=sk",
    ]));
    assert!(bad.fails().contains("unknown key 'api_key'"), "{bad:?}");
    let shown = run(server.cflow().args(["tenant", "llm", "show"]));
    assert!(shown.ok().contains("main  anthropic"), "{shown:?}");

    let cleared = run(server.cflow().args(["tenant", "llm", "set", "--clear"]));
    assert!(
        cleared.ok().contains("no providers of its own"),
        "{cleared:?}"
    );
    server.stop();
}

#[test]
fn a_bad_provider_in_cflow_toml_is_refused_when_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cflow.toml"),
        "[[server.llm.providers]]\nname = \"x\"\nkind = \"openai\"\n",
    )
    .unwrap();
    let bad = run(cflow_in(dir.path()).args(["config", "show"]));
    let err = bad.fails();
    assert!(err.contains("providers[0].model"), "{bad:?}");
    std::fs::write(
        dir.path().join("cflow.toml"),
        "[[server.llm.providers]]\nname = \"ollama\"\nkind = \"openai\"\n\
         base_url = \"http://localhost:11434/v1\"\nmodel = \"llama3.1\"\n",
    )
    .unwrap();
    let ok = run(cflow_in(dir.path()).args(["config", "show"]));
    assert!(ok.ok().contains("ollama"), "{ok:?}");
}
