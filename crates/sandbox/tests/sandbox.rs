//! The sandbox over real HTTP on port 0: every S3 rule, every API validation, auth, OAuth,
//! and each fault knob, one behaviour per test.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::{Digest, Md5};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use visibuild_sandbox::{ManualClock, Sandbox, SandboxConfig, Secret};

const TOKEN: &str = "sandbox-token";
const PROJECT: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

/// A clock for the tests that move time: it starts on a whole second and stands still.
fn manual_clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
}

async fn sandbox_with(cfg: SandboxConfig) -> Sandbox {
    // reqwest is built without a crypto provider in this workspace (see the root crate).
    let _ = rustls::crypto::ring::default_provider().install_default();
    visibuild_sandbox::start(cfg).await.expect("sandbox starts")
}

async fn default_sandbox() -> Sandbox {
    sandbox_with(SandboxConfig::default()).await
}

fn md5_b64(body: &[u8]) -> String {
    BASE64.encode(Md5::digest(body))
}

/// A presign request body for `body`, named `photo.jpg`.
fn presign_body(body: &[u8]) -> Value {
    json!({
        "filename": "photo.jpg",
        "contentType": "image/jpeg",
        "fileSize": body.len(),
        "checksum": md5_b64(body),
    })
}

async fn post_json(sb: &Sandbox, path: &str, token: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", sb.base_url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request is answered")
}

/// Presigns `body` as `token`; returns `data.upload`.
async fn presign_as(sb: &Sandbox, token: &str, body: &[u8]) -> Value {
    let response = post_json(sb, "/api/core/v1/attachments", token, &presign_body(body)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let json: Value = response.json().await.unwrap();
    json["data"]["upload"].clone()
}

async fn presign(sb: &Sandbox, body: &[u8]) -> Value {
    presign_as(sb, TOKEN, body).await
}

/// PUTs `body` to the upload's URL with exactly the returned headers.
async fn put(upload: &Value, body: &[u8]) -> reqwest::Response {
    put_with(upload, upload["url"].as_str().unwrap(), body, |r| r).await
}

async fn put_with(
    upload: &Value,
    url: &str,
    body: &[u8],
    tweak: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let mut request = reqwest::Client::new().put(url).body(body.to_vec());
    for (name, value) in upload["headers"].as_object().unwrap() {
        request = request.header(name, value.as_str().unwrap());
    }
    tweak(request).send().await.expect("PUT is answered")
}

/// A presigned and uploaded attachment's key.
async fn uploaded_key_as(sb: &Sandbox, token: &str, body: &[u8]) -> String {
    let upload = presign_as(sb, token, body).await;
    assert_eq!(put(&upload, body).await.status(), StatusCode::OK);
    upload["key"].as_str().unwrap().to_string()
}

async fn s3_error(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body = response.text().await.unwrap();
    let code = body
        .split("<Code>")
        .nth(1)
        .and_then(|rest| rest.split("</Code>").next())
        .unwrap_or_else(|| panic!("not an S3 error body: {body}"))
        .to_string();
    (status, code)
}

async fn ticket(sb: &Sandbox, keys: &[&str]) -> reqwest::Response {
    let body = json!({ "title": "Hinge broken", "projectId": PROJECT, "attachmentKeys": keys });
    post_json(sb, "/api/core/v1/tickets", TOKEN, &body).await
}

async fn error_of(response: reqwest::Response) -> Value {
    response.json::<Value>().await.unwrap()["error"].clone()
}

/// Writes a raw HTTP/1.1 request and returns the status line's code and the whole answer.
async fn raw_http(sb: &Sandbox, request: String) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(sb.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    (status, answer)
}

/// The path-and-query of an upload URL, and its `Host`.
fn target(upload: &Value) -> (String, String) {
    let url = url::Url::parse(upload["url"].as_str().unwrap()).unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    (format!("{}?{}", url.path(), url.query().unwrap()), host)
}

// ---- S3 ----

#[tokio::test]
async fn presigned_put_then_ticket_shows_the_object_with_its_md5_and_size() {
    let sb = default_sandbox().await;
    let body = b"jpeg bytes".repeat(1000);
    let upload = presign(&sb, &body).await;
    assert_eq!(upload["filename"], "photo.jpg");
    assert_eq!(upload["headers"]["Content-MD5"], md5_b64(&body));
    let url = upload["url"].as_str().unwrap();
    for param in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=",
        "X-Amz-Date=",
        "X-Amz-Expires=900",
        "X-Amz-SignedHeaders=content-md5%3Bcontent-type%3Bhost",
        "X-Amz-Signature=",
    ] {
        assert!(
            url.contains(param),
            "{param} missing from the presigned URL"
        );
    }

    let response = put(&upload, &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", hex::encode(Md5::digest(&body))));

    let key = upload["key"].as_str().unwrap();
    assert!(key.starts_with("attachment/") && key.ends_with("/photo.jpg"));
    let response = ticket(&sb, &[key]).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["data"]["ticket"]["attachmentKeys"], json!([key]));

    let listed: Value = reqwest::get(format!("{}/sandbox/tickets", sb.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = &listed["tickets"][0];
    assert_eq!(listed["id"], created["data"]["ticket"]["id"]);
    assert_eq!(listed["attachments"][0]["key"], key);
    assert_eq!(listed["attachments"][0]["size"], body.len());
    assert_eq!(listed["attachments"][0]["md5"], md5_b64(&body));
    assert_eq!(sb.tickets().len(), 1);
    assert_eq!(sb.stats().count("PUT /s3", 200), 1);
}

#[tokio::test]
async fn chunked_put_is_501_not_implemented() {
    let sb = default_sandbox().await;
    let body = b"hello";
    let upload = presign(&sb, body).await;
    let (path, host) = target(&upload);
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nContent-MD5: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        md5_b64(body)
    );
    let (status, answer) = raw_http(&sb, request).await;
    assert_eq!(status, 501);
    assert!(answer.contains("<Code>NotImplemented</Code>"));
    assert!(sb.objects().is_empty());
}

#[tokio::test]
async fn put_without_content_length_is_411_missing_content_length() {
    let sb = default_sandbox().await;
    let body = b"hello";
    let upload = presign(&sb, body).await;
    let (path, host) = target(&upload);
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\nContent-MD5: {}\r\nConnection: close\r\n\r\n",
        md5_b64(body)
    );
    let (status, answer) = raw_http(&sb, request).await;
    assert_eq!(status, 411);
    assert!(answer.contains("<Code>MissingContentLength</Code>"));
}

#[tokio::test]
async fn put_after_the_url_ttl_is_403_request_has_expired() {
    let time = manual_clock();
    let sb = sandbox_with(SandboxConfig {
        url_ttl: Duration::from_secs(60),
        clock: time.clone().into(),
        ..Default::default()
    })
    .await;
    let body = b"late";
    let upload = presign(&sb, body).await;
    time.advance(Duration::from_secs(60));
    let last_moment = put(&upload, body).await;
    assert_eq!(
        last_moment.status(),
        StatusCode::OK,
        "valid to the end of its TTL"
    );
    time.advance(Duration::from_millis(1));
    let response = put(&upload, body).await;
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    assert!(text.contains("Request has expired"), "{text}");
}

#[tokio::test]
async fn put_with_an_altered_signature_is_403_signature_does_not_match() {
    let sb = default_sandbox().await;
    let body = b"data";
    let upload = presign(&sb, body).await;
    let url = upload["url"].as_str().unwrap();
    let (head, signature) = url.split_once("X-Amz-Signature=").unwrap();
    let flipped = if signature.starts_with('0') { "1" } else { "0" };
    let forged = format!("{head}X-Amz-Signature={flipped}{}", &signature[1..]);
    let response = put_with(&upload, &forged, body, |r| r).await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
    );
}

#[tokio::test]
async fn put_with_a_tampered_query_or_path_is_403_signature_does_not_match() {
    let sb = default_sandbox().await;
    let body = b"data";
    let upload = presign(&sb, body).await;
    let url = upload["url"].as_str().unwrap();
    let longer = url.replace("X-Amz-Expires=900", "X-Amz-Expires=3600");
    let extra = format!("{url}&acl=public-read");
    let other_path = url.replace("/photo.jpg?", "/other.jpg?");
    for tampered in [longer, extra, other_path] {
        let response = put_with(&upload, &tampered, body, |r| r).await;
        assert_eq!(
            s3_error(response).await,
            (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
        );
    }
    assert!(sb.objects().is_empty());
}

#[tokio::test]
async fn put_with_a_different_or_missing_content_type_is_403_signature_does_not_match() {
    let sb = default_sandbox().await;
    let body = b"data";
    let upload = presign(&sb, body).await;
    let url = upload["url"].as_str().unwrap();
    let mut other_type = upload.clone();
    other_type["headers"]["Content-Type"] = json!("image/png");
    let response = put_with(&other_type, url, body, |r| r).await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
    );
    // A second Content-Type next to the signed one is not the signed value either.
    let response = put_with(&upload, url, body, |r| {
        r.header("Content-Type", "image/png")
    })
    .await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
    );
    let mut headers_without_type = upload.clone();
    headers_without_type["headers"]
        .as_object_mut()
        .unwrap()
        .remove("Content-Type");
    let response = put_with(&headers_without_type, url, body, |r| r).await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
    );
}

#[tokio::test]
async fn put_with_a_different_or_missing_content_md5_is_403_signature_does_not_match() {
    let sb = default_sandbox().await;
    let body = b"data";
    let upload = presign(&sb, body).await;
    let url = upload["url"].as_str().unwrap();
    let other_md5 = md5_b64(b"other");
    let mut other = upload.clone();
    other["headers"]["Content-MD5"] = json!(other_md5);
    let response = put_with(&other, url, body, |r| r).await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
    );
    let mut headers_without_md5 = upload.clone();
    headers_without_md5["headers"]
        .as_object_mut()
        .unwrap()
        .remove("Content-MD5");
    let response = put_with(&headers_without_md5, url, body, |r| r).await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::FORBIDDEN, "SignatureDoesNotMatch".into())
    );
}

#[tokio::test]
async fn body_not_matching_content_md5_is_400_bad_digest_and_keeps_the_earlier_object() {
    let data_dir = tempfile::tempdir().unwrap();
    let sb = sandbox_with(SandboxConfig {
        data_dir: Some(data_dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let good = b"good bytes";
    let upload = presign(&sb, good).await;
    let bad = b"evil bytes"; // same length, different content
    let response = put(&upload, bad).await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::BAD_REQUEST, "BadDigest".into())
    );
    assert!(sb.objects().is_empty(), "a bad body must not be stored");
    let key = upload["key"].as_str().unwrap();
    assert_eq!(
        error_of(ticket(&sb, &[key]).await).await["message"],
        "attachment key not found"
    );

    assert_eq!(put(&upload, good).await.status(), StatusCode::OK);
    let response = put(&upload, bad).await;
    assert_eq!(s3_error(response).await.1, "BadDigest");
    let stored: Vec<_> = std::fs::read_dir(data_dir.path().join("objects"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(stored, vec![good.to_vec()]);
    let leftovers = std::fs::read_dir(data_dir.path().join("incoming")).unwrap();
    assert_eq!(leftovers.count(), 0, "rejected bodies leave no temp files");
}

#[tokio::test]
async fn body_of_another_size_than_presigned_is_400_entity_too_small_or_large() {
    let sb = default_sandbox().await;
    let body = b"twelve bytes";
    let upload = presign(&sb, body).await;
    let response = put(&upload, b"short").await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::BAD_REQUEST, "EntityTooSmall".into())
    );
    let response = put(&upload, b"twelve bytes and more").await;
    assert_eq!(
        s3_error(response).await,
        (StatusCode::BAD_REQUEST, "EntityTooLarge".into())
    );
    assert!(sb.objects().is_empty());
}

#[tokio::test]
async fn s3_fail_rate_one_answers_every_put_with_an_s3_5xx_before_storing() {
    let sb = sandbox_with(SandboxConfig {
        s3_fail_rate: 1.0,
        seed: Some(7),
        ..Default::default()
    })
    .await;
    let body = b"data";
    let upload = presign(&sb, body).await;
    for _ in 0..4 {
        let (status, code) = s3_error(put(&upload, body).await).await;
        assert!(
            (status, code.as_str()) == (StatusCode::SERVICE_UNAVAILABLE, "SlowDown")
                || (status, code.as_str()) == (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            "{status} {code}"
        );
    }
    assert_eq!(sb.stats().s3_faults, 4);
    assert!(sb.objects().is_empty());
}

// ---- presign validation ----

async fn presign_field_error(patch: Value) -> (StatusCode, Value) {
    let sb = default_sandbox().await;
    let mut body = presign_body(b"data");
    for (name, value) in patch.as_object().unwrap() {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(name);
        } else {
            body[name] = value.clone();
        }
    }
    let response = post_json(&sb, "/api/core/v1/attachments", TOKEN, &body).await;
    let status = response.status();
    (status, error_of(response).await)
}

#[tokio::test]
async fn presign_rejects_a_missing_empty_or_path_like_filename() {
    for bad in [
        json!(null),
        json!(""),
        json!("a/b.jpg"),
        json!(".."),
        json!(12),
    ] {
        let (status, error) = presign_field_error(json!({ "filename": bad })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(error["field"], "filename", "{bad}");
    }
}

#[tokio::test]
async fn presign_rejects_a_content_type_that_is_not_type_slash_subtype() {
    for bad in [
        json!(null),
        json!("jpeg"),
        json!("image/"),
        json!("/jpeg"),
        json!(1),
    ] {
        let (status, error) = presign_field_error(json!({ "contentType": bad })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(error["field"], "contentType", "{bad}");
    }
}

#[tokio::test]
async fn presign_rejects_a_file_size_that_is_not_a_positive_integer_up_to_5_gib() {
    let too_big = 5u64 * 1024 * 1024 * 1024 + 1;
    for bad in [
        json!(null),
        json!(0),
        json!(-1),
        json!(1.5),
        json!("10"),
        json!(too_big),
    ] {
        let (status, error) = presign_field_error(json!({ "fileSize": bad })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(error["field"], "fileSize", "{bad}");
    }
    let (status, _) = presign_field_error(json!({ "fileSize": too_big - 1 })).await;
    assert_eq!(status, StatusCode::OK, "exactly 5 GiB is allowed");
}

#[tokio::test]
async fn presign_rejects_a_checksum_that_is_not_base64_of_16_bytes() {
    let short = BASE64.encode([0u8; 15]);
    for bad in [
        json!(null),
        json!("not base64!"),
        json!(short),
        json!(hex::encode([0u8; 16])),
    ] {
        let (status, error) = presign_field_error(json!({ "checksum": bad })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(error["field"], "checksum", "{bad}");
    }
}

#[tokio::test]
async fn malformed_json_is_400() {
    let sb = default_sandbox().await;
    for path in ["/api/core/v1/attachments", "/api/core/v1/tickets"] {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", sb.base_url()))
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body("{\"filename\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(error_of(response).await["message"].is_string());
    }
}

// ---- tickets ----

#[tokio::test]
async fn ticket_with_a_key_never_uploaded_is_422_attachment_key_not_found() {
    let sb = default_sandbox().await;
    let upload = presign(&sb, b"never sent").await;
    for key in ["attachment/nope/x.jpg", upload["key"].as_str().unwrap()] {
        let response = ticket(&sb, &[key]).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let error = error_of(response).await;
        assert_eq!(error["message"], "attachment key not found");
        assert_eq!(error["key"], key);
    }
    assert!(sb.tickets().is_empty());
}

#[tokio::test]
async fn ticket_with_another_companys_key_is_422_attachment_belongs_to_another_company() {
    let sb = sandbox_with(SandboxConfig {
        tokens: vec![
            (Secret::new(TOKEN), "sandbox".into()),
            (Secret::new("rival-token"), "rival".into()),
        ],
        ..Default::default()
    })
    .await;
    let key = uploaded_key_as(&sb, "rival-token", b"theirs").await;
    let response = ticket(&sb, &[&key]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_of(response).await;
    assert_eq!(error["message"], "attachment belongs to another company");
    assert_eq!(error["key"], key);
}

#[tokio::test]
async fn ticket_reusing_a_linked_key_is_422_attachment_already_associated() {
    let sb = default_sandbox().await;
    let key = uploaded_key_as(&sb, TOKEN, b"once").await;
    assert_eq!(ticket(&sb, &[&key]).await.status(), StatusCode::CREATED);
    let response = ticket(&sb, &[&key]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_of(response).await;
    assert_eq!(error["message"], "attachment already associated");
    assert_eq!(error["key"], key);
    assert_eq!(sb.tickets().len(), 1);
}

#[tokio::test]
async fn one_bad_key_rejects_the_whole_ticket_and_links_nothing() {
    let sb = default_sandbox().await;
    let good = uploaded_key_as(&sb, TOKEN, b"good").await;
    let response = ticket(&sb, &[&good, "attachment/missing/x.jpg"]).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_of(response).await["key"], "attachment/missing/x.jpg");
    assert!(sb.tickets().is_empty());
    assert_eq!(sb.objects()[0].ticket_id, None);
    // The good key is still free to link.
    assert_eq!(ticket(&sb, &[&good]).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn ticket_fields_are_validated_and_named() {
    let sb = sandbox_with(SandboxConfig {
        projects: vec![PROJECT.parse().unwrap()],
        ..Default::default()
    })
    .await;
    let cases = [
        (json!({ "projectId": PROJECT }), "title"),
        (json!({ "title": " ", "projectId": PROJECT }), "title"),
        (json!({ "title": "t" }), "projectId"),
        (
            json!({ "title": "t", "projectId": "not-a-uuid" }),
            "projectId",
        ),
        (
            json!({ "title": "t", "projectId": "00000000-0000-0000-0000-000000000001" }),
            "projectId",
        ),
        (
            json!({ "title": "t", "projectId": PROJECT, "priority": "urgent" }),
            "priority",
        ),
        (
            json!({ "title": "t", "projectId": PROJECT, "address": 5 }),
            "address",
        ),
        (
            json!({ "title": "t", "projectId": PROJECT, "contact": "jane" }),
            "contact",
        ),
        (
            json!({ "title": "t", "projectId": PROJECT, "contact": { "email": "jane.example.com" } }),
            "contact",
        ),
        (
            json!({ "title": "t", "projectId": PROJECT, "attachmentKeys": [1] }),
            "attachmentKeys",
        ),
    ];
    for (body, field) in cases {
        let response = post_json(&sb, "/api/core/v1/tickets", TOKEN, &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        assert_eq!(error_of(response).await["field"], field, "{body}");
    }
    let full = json!({
        "title": "Kitchen cabinet door hinge broken",
        "projectId": PROJECT,
        "address": "Unit 405, 123 Main St",
        "priority": "medium",
        "contact": { "name": "Jane Doe", "email": "jane.doe@example.com" },
    });
    let response = post_json(&sb, "/api/core/v1/tickets", TOKEN, &full).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["data"]["ticket"]["priority"], "medium");
    assert_eq!(
        created["data"]["ticket"]["contact"]["email"],
        "jane.doe@example.com"
    );
    assert!(sb.tickets().len() == 1 && sb.tickets()[0].address.is_some());
}

// ---- auth ----

#[tokio::test]
async fn api_calls_without_or_with_a_bad_token_are_401() {
    let sb = default_sandbox().await;
    let url = format!("{}/api/core/v1/attachments", sb.base_url());
    let without = reqwest::Client::new()
        .post(&url)
        .json(&presign_body(b"x"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    assert!(error_of(without).await["message"].is_string());
    let bad = post_json(&sb, "/api/core/v1/tickets", "wrong-token", &json!({})).await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let text = bad.text().await.unwrap();
    assert!(!text.contains("wrong-token"), "the token is never echoed");
}

async fn oauth(sb: &Sandbox, form: &[(&str, &str)]) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/oauth/token", sb.base_url()))
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn oauth_tokens_work_for_their_company_until_token_ttl() {
    let time = manual_clock();
    let sb = sandbox_with(SandboxConfig {
        clients: vec![("client-1".into(), Secret::new("s3cret"), "acme".into())],
        token_ttl: Duration::from_secs(3600),
        clock: time.clone().into(),
        ..Default::default()
    })
    .await;
    let response = oauth(
        &sb,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "client-1"),
            ("client_secret", "s3cret"),
            ("scope", "read write"),
        ],
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let grant: Value = response.json().await.unwrap();
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["expires_in"], 3600);
    assert_eq!(grant["scope"], "read write");
    let token = grant["access_token"].as_str().unwrap();

    let key = uploaded_key_as(&sb, token, b"acme file").await;
    assert_eq!(sb.objects()[0].company, "acme");
    // The default token is company "sandbox": acme's key is not its own.
    let error = error_of(ticket(&sb, &[&key]).await).await;
    assert_eq!(error["message"], "attachment belongs to another company");

    time.advance(Duration::from_secs(3600) - Duration::from_millis(1));
    let last_moment = post_json(&sb, "/api/core/v1/attachments", token, &presign_body(b"x")).await;
    assert_eq!(last_moment.status(), StatusCode::OK);
    time.advance(Duration::from_millis(1));
    let expired = post_json(&sb, "/api/core/v1/attachments", token, &presign_body(b"x")).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oauth_refuses_a_bad_client_with_401_and_a_bad_grant_type_with_400() {
    let sb = sandbox_with(SandboxConfig {
        clients: vec![("client-1".into(), Secret::new("s3cret"), "acme".into())],
        ..Default::default()
    })
    .await;
    let bad_secret = oauth(
        &sb,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "client-1"),
            ("client_secret", "guess"),
        ],
    )
    .await;
    assert_eq!(bad_secret.status(), StatusCode::UNAUTHORIZED);
    let body: Value = bad_secret.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    let bad_grant = oauth(
        &sb,
        &[
            ("grant_type", "password"),
            ("client_id", "client-1"),
            ("client_secret", "s3cret"),
        ],
    )
    .await;
    assert_eq!(bad_grant.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad_grant.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
}

// ---- fault knobs ----

#[tokio::test]
async fn above_the_rate_the_api_answers_429_with_retry_after() {
    let time = manual_clock();
    let sb = sandbox_with(SandboxConfig {
        rate: Some(1),
        clock: time.clone().into(),
        ..Default::default()
    })
    .await;
    let first = post_json(&sb, "/api/core/v1/attachments", TOKEN, &presign_body(b"a")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = post_json(&sb, "/api/core/v1/attachments", TOKEN, &presign_body(b"b")).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1);
    let also_oauth = oauth(&sb, &[("grant_type", "client_credentials")]).await;
    assert_eq!(also_oauth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(sb.stats().rate_limited, 2);
    time.advance(Duration::from_secs(retry_after));
    let after = post_json(&sb, "/api/core/v1/attachments", TOKEN, &presign_body(b"c")).await;
    assert_eq!(
        after.status(),
        StatusCode::OK,
        "a client that honours Retry-After gets in"
    );
}

#[tokio::test]
async fn a_strict_bucket_lets_one_request_through_per_interval_and_no_burst() {
    let time = manual_clock();
    let sb = sandbox_with(SandboxConfig {
        rate: Some(20),
        rate_burst: Some(1),
        clock: time.clone().into(),
        ..Default::default()
    })
    .await;
    let presign = |n: u8| {
        let sb = &sb;
        async move {
            post_json(sb, "/api/core/v1/attachments", TOKEN, &presign_body(&[n]))
                .await
                .status()
        }
    };
    assert_eq!(presign(1).await, StatusCode::OK);
    // Idle time saves nothing up: after a minute, still one at a time.
    time.advance(Duration::from_secs(60));
    assert_eq!(presign(2).await, StatusCode::OK);
    let refused = post_json(&sb, "/api/core/v1/attachments", TOKEN, &presign_body(b"x")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()["retry-after"],
        "1",
        "an integer Retry-After"
    );
    // 1/20 s after the last one let through, the next gets in; a hair earlier it does not.
    time.advance(Duration::from_millis(49));
    assert_eq!(presign(3).await, StatusCode::TOO_MANY_REQUESTS);
    time.advance(Duration::from_millis(1));
    assert_eq!(presign(4).await, StatusCode::OK);
    assert_eq!(sb.stats().rate_limited, 2);
}

#[tokio::test]
async fn fail_rate_one_answers_every_api_call_with_a_5xx_and_does_nothing() {
    let sb = sandbox_with(SandboxConfig {
        fail_rate: 1.0,
        seed: Some(1),
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        let response = ticket(&sb, &[]).await;
        assert!(
            [500, 502, 503].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
    }
    assert!(sb.tickets().is_empty());
    let stats = sb.stats();
    assert_eq!(stats.faults_injected, 5);
    let served: u64 = stats.requests["POST /api/core/v1/tickets"].values().sum();
    assert_eq!(served, 5);
}

#[tokio::test]
async fn drop_rate_one_creates_the_ticket_but_the_client_sees_a_connection_error() {
    let sb = sandbox_with(SandboxConfig {
        drop_rate: 1.0,
        ..Default::default()
    })
    .await;
    let key = uploaded_key_as(&sb, TOKEN, b"lost answer").await;
    let body = json!({ "title": "t", "projectId": PROJECT, "attachmentKeys": [key] });
    let outcome = reqwest::Client::new()
        .post(format!("{}/api/core/v1/tickets", sb.base_url()))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await;
    let err = outcome.expect_err("no HTTP response at all");
    assert!(err.status().is_none());
    assert_eq!(sb.tickets().len(), 1);
    assert_eq!(sb.tickets()[0].attachments[0].key, key);
    assert_eq!(sb.stats().responses_dropped, 1);
    // A retry of the same create is told the key is already linked.
    let retry = ticket(&sb, &[&key]).await;
    assert_eq!(retry.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        error_of(retry).await["message"],
        "attachment already associated"
    );
}

#[tokio::test]
async fn stats_endpoint_reports_requests_by_endpoint_and_status() {
    let sb = default_sandbox().await;
    presign(&sb, b"x").await;
    post_json(&sb, "/api/core/v1/attachments", "bad", &json!({})).await;
    let stats: Value = reqwest::get(format!("{}/sandbox/stats", sb.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"]["POST /api/core/v1/attachments"]["200"], 1);
    assert_eq!(stats["requests"]["POST /api/core/v1/attachments"]["401"], 1);
    assert_eq!(stats["rateLimited"], 0);
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sb = default_sandbox().await;
    let url = format!("{}/sandbox/tickets", sb.base_url());
    assert!(reqwest::get(&url).await.unwrap().status().is_success());
    sb.shutdown().await;
    assert!(reqwest::get(&url).await.is_err());
}
