//! Bounds on what the operator reads from endpoints the spec names and on what it writes into
//! status conditions and Events: an endpoint cannot grow the operator's memory with a large
//! answer, and a long or multi-line message cannot make a status write or an Event fail.

/// Longest condition message and Event note, in bytes (the Events API refuses notes over 1 KiB).
pub const MESSAGE_MAX: usize = 1024;

/// Most bytes read of an HTTP answer (Tator's REST API, Elasticsearch, S3 errors).
pub const BODY_MAX: usize = 1 << 20;

/// `s` on one line (control characters become spaces) and at most `max` bytes, cut at a
/// character boundary with `…` at the end when shortened.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.len() <= max {
        return flat;
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &flat[..end])
}

/// Why an answer's body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the answer: {0}")]
    Read(String),
}

/// The body of `resp`, read chunk by chunk and given up past `max` bytes (a `Content-Length`
/// above it is refused before reading).
pub async fn body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.to_string()))?
    {
        if out.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_flattens_and_cuts_at_a_character_boundary() {
        assert_eq!(one_line("a\nb\r\tc", 100), "a b  c");
        assert_eq!(one_line("short", 5), "short");
        let cut = one_line("ééééé", 7); // 2 bytes each: room for 2 and the ellipsis
        assert_eq!(cut, "éé…");
        assert!(cut.len() <= 7);
        let long = "x".repeat(5000);
        assert_eq!(one_line(&long, MESSAGE_MAX).len(), MESSAGE_MAX);
    }

    async fn serve(body: Vec<u8>, content_length: bool) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = if content_length {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_string()
            };
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
        format!("http://{addr}/")
    }

    fn client() -> reqwest::Client {
        let tls = crate::checks::tls_config(None, true).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_bound() {
        let c = client();
        let url = serve(b"{\"ok\":true}".to_vec(), true).await;
        let small = body(c.get(url).send().await.unwrap(), 64).await.unwrap();
        assert_eq!(small, b"{\"ok\":true}");
        // Announced as too large: refused before reading.
        let url = serve(vec![b'x'; 10_000], true).await;
        let r = body(c.get(url).send().await.unwrap(), 1000).await;
        assert!(matches!(r, Err(BodyError::TooLarge(1000))), "{r:?}");
        // Not announced (read to the end of the connection): stops past the bound.
        let url = serve(vec![b'x'; 10_000], false).await;
        let r = body(c.get(url).send().await.unwrap(), 1000).await;
        assert!(matches!(r, Err(BodyError::TooLarge(1000))), "{r:?}");
    }
}
