//! The HTTP API through the typed client and raw requests: validation, errors, concurrency,
//! and the OpenAPI document.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::{TestDaemon, rt};
use http::Method;
use nexus_lib::api::CreateVm;
use nexus_lib::client::{Client, read_body};

fn raw(client: &Client, method: Method, path: &str, body: &str) -> (u16, serde_json::Value) {
    rt().block_on(async {
        let resp = client
            .send_raw(
                method,
                path,
                Some(Bytes::from(body.to_owned())),
                Some("application/json"),
            )
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = read_body(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    })
}

fn vm_count(client: &Client) -> usize {
    rt().block_on(client.list_vms(None)).unwrap().len()
}

#[test]
fn two_hundred_concurrent_creates_get_distinct_cids() {
    let d = TestDaemon::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let vms = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200 {
            let client = d.client.clone();
            set.spawn(async move {
                client
                    .create_vm(&CreateVm {
                        name: format!("vm-{i}"),
                        ..CreateVm::default()
                    })
                    .await
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap().expect("every create succeeds"));
        }
        out
    });
    let cids: HashSet<u32> = vms.iter().map(|v| v.vsock_cid).collect();
    assert_eq!(cids.len(), 200);
    assert!(cids.iter().all(|c| *c >= 3));
    assert_eq!(vm_count(&d.client), 200);
}

#[test]
fn malformed_json_is_400_and_writes_nothing() {
    let d = TestDaemon::start();
    let (status, body) = raw(&d.client, Method::POST, "/v1/vms", "{\"name\":");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    assert_eq!(vm_count(&d.client), 0);
}

#[test]
fn unknown_field_is_422() {
    let d = TestDaemon::start();
    let (status, body) = raw(
        &d.client,
        Method::POST,
        "/v1/vms",
        r#"{"name":"a","cpus":2}"#,
    );
    assert_eq!(status, 422);
    assert!(body["error"]["message"].as_str().unwrap().contains("cpus"));
    assert_eq!(vm_count(&d.client), 0);
}

#[test]
fn wrong_type_is_422_naming_the_field() {
    let d = TestDaemon::start();
    let (status, body) = raw(
        &d.client,
        Method::POST,
        "/v1/vms",
        r#"{"name":"a","vcpus":"2"}"#,
    );
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "vcpus");
}

#[test]
fn out_of_range_is_422_naming_the_field() {
    let d = TestDaemon::start();
    let (status, body) = raw(
        &d.client,
        Method::POST,
        "/v1/vms",
        r#"{"name":"a","memory_mib":32}"#,
    );
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "memory_mib");
    assert_eq!(vm_count(&d.client), 0);
}

#[test]
fn oversized_body_is_413() {
    let d = TestDaemon::start();
    let body = format!(r#"{{"name":"{}"}}"#, "a".repeat(200_000));
    let (status, body) = raw(&d.client, Method::POST, "/v1/vms", &body);
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[test]
fn duplicate_name_is_409() {
    let d = TestDaemon::start();
    let body = r#"{"name":"same"}"#;
    assert_eq!(raw(&d.client, Method::POST, "/v1/vms", body).0, 201);
    let (status, err) = raw(&d.client, Method::POST, "/v1/vms", body);
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "conflict");
}

#[test]
fn unknown_vm_is_404() {
    let d = TestDaemon::start();
    let err = rt().block_on(d.client.get_vm("nobody")).unwrap_err();
    assert_eq!(err.status(), Some(404));
}

#[test]
fn vm_is_addressable_by_id_and_by_name() {
    let d = TestDaemon::start();
    let rt = rt();
    let vm = rt
        .block_on(d.client.create_vm(&CreateVm {
            name: "both".into(),
            ..CreateVm::default()
        }))
        .unwrap();
    assert_eq!(
        rt.block_on(d.client.get_vm(&vm.id.to_string())).unwrap(),
        vm
    );
    assert_eq!(rt.block_on(d.client.get_vm("both")).unwrap(), vm);
}

#[test]
fn state_filter_selects_vms() {
    let d = TestDaemon::start();
    raw(&d.client, Method::POST, "/v1/vms", r#"{"name":"f1"}"#);
    let rt = rt();
    let created = rt
        .block_on(d.client.list_vms(Some(nexus_lib::api::VmState::Created)))
        .unwrap();
    let running = rt
        .block_on(d.client.list_vms(Some(nexus_lib::api::VmState::Running)))
        .unwrap();
    assert_eq!((created.len(), running.len()), (1, 0));
}

#[test]
fn openapi_document_covers_every_route() {
    let d = TestDaemon::start();
    let (status, doc) = raw(&d.client, Method::GET, "/v1/openapi.json", "");
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/health", "get"),
        ("/v1/vms", "get"),
        ("/v1/vms", "post"),
        ("/v1/vms/{vm}", "get"),
        ("/v1/vms/{vm}", "delete"),
        ("/v1/vms/{vm}/history", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
}

#[test]
fn unknown_route_is_json_404() {
    let d = TestDaemon::start();
    let (status, body) = raw(&d.client, Method::GET, "/v1/nothing-here", "");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

/// One raw HTTP/1.1 request over the Unix socket; the status and the body.
fn raw_http(d: &TestDaemon, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}

fn error_code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body:?}"));
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn every_refusal_before_the_handler_is_a_json_error() {
    let d = TestDaemon::start();
    let long = "a".repeat(9000);
    let big = "b".repeat(17000);
    let cases = [
        (
            "GET /v1/vms/%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            400,
            "bad_request",
        ),
        (
            format!("GET /v1/vms/{long} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /v1/vms HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
            431,
            "headers_too_large",
        ),
        (
            "POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                .to_owned(),
            415,
            "unsupported_media_type",
        ),
        (
            "GET /v1/vms?state=nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            400,
            "bad_request",
        ),
    ];
    for (head, status, code) in cases {
        let (got, body) = raw_http(&d, &head);
        assert_eq!(
            (got, error_code(&body)),
            (status, code.to_owned()),
            "{}",
            &head[..40]
        );
    }
}

#[test]
fn openapi_declares_the_bearer_scheme_on_every_operation() {
    let d = TestDaemon::start();
    let (_, body) = raw_http(
        &d,
        "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
            assert_eq!(
                op["security"][0]["bearer"],
                serde_json::json!([]),
                "{method} {path}"
            );
        }
    }
}
