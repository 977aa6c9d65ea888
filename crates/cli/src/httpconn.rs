//! One keep-alive HTTP/1.1 connection per thread for `magpie bench --url`'s query loop.
//!
//! `ureq` 2 (the CLI's client for everything else) writes a request's head and body with
//! two `send` calls, so the server is woken twice per search and the measurement carries
//! a cost that curl, `ab` or Python's `http.client` (which join small bodies to the head)
//! do not have. hyper writes head and body in one vectored write. A current-thread tokio
//! runtime per thread keeps the client from adding thread hand-offs of its own.

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use std::cell::RefCell;

struct Conn {
    /// `host:port` this connection goes to.
    authority: String,
    rt: tokio::runtime::Runtime,
    send: SendRequest<Full<Bytes>>,
}

thread_local! {
    static CONN: RefCell<Option<Conn>> = const { RefCell::new(None) };
}

/// `host:port` and the path prefix (without a trailing `/`) of a plain `http://` URL;
/// `None` for anything else (https goes through ureq).
pub fn split(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (a, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    (!a.is_empty()).then_some((a, path.trim_end_matches('/')))
}

/// The request path of endpoint `ep` (no leading `/`) under the path prefix `base` that
/// [`split`] returned.
pub fn path(base: &str, ep: &str) -> String {
    if base.is_empty() {
        format!("/{ep}")
    } else {
        format!("/{base}/{ep}")
    }
}

fn connect(authority: &str) -> Result<Conn> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let send = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        anyhow::Ok(send)
    })?;
    Ok(Conn {
        authority: authority.to_string(),
        rt,
        send,
    })
}

/// POSTs a JSON `body` to `path` on this thread's connection to `authority` (opened, or
/// reopened after the server closed it, as needed) and returns the status and body.
pub fn post(authority: &str, path: &str, token: Option<&str>, body: Bytes) -> Result<(u16, Bytes)> {
    send(authority, hyper::Method::POST, path, token, Some(body))
}

/// GETs `path` on this thread's connection to `authority`.
pub fn get(authority: &str, path: &str) -> Result<(u16, Bytes)> {
    send(authority, hyper::Method::GET, path, None, None)
}

fn send(
    authority: &str,
    method: hyper::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Bytes>,
) -> Result<(u16, Bytes)> {
    CONN.with(|cell| {
        let mut slot = cell.borrow_mut();
        for attempt in 0..2 {
            if slot
                .as_ref()
                .is_none_or(|c| c.authority != authority || c.send.is_closed())
            {
                *slot = Some(connect(authority)?);
            }
            let c = slot.as_mut().expect("connected above");
            let mut req = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, authority);
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(t) = token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req.body(Full::new(body.clone().unwrap_or_default()))?;
            let send = &mut c.send;
            let res = c.rt.block_on(async {
                send.ready().await?;
                let r = send.send_request(req).await?;
                let status = r.status().as_u16();
                let bytes = r.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, bytes))
            });
            match res {
                Ok(r) => return Ok(r),
                // A keep-alive connection the server closed between two requests: once
                // more on a new one.
                Err(e) if attempt == 0 && (e.is_closed() || e.is_canceled()) => *slot = None,
                Err(e) => return Err(e).with_context(|| format!("{method} {path} to {authority}")),
            }
        }
        bail!("{method} {path} to {authority}: the connection closed twice")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_plain_http_urls_only() {
        assert_eq!(
            split("http://127.0.0.1:19530"),
            Some(("127.0.0.1:19530", ""))
        );
        assert_eq!(split("http://h:1/"), Some(("h:1", "")));
        assert_eq!(split("http://h:1/base/"), Some(("h:1", "base")));
        assert_eq!(split("https://h:1"), None);
        assert_eq!(split("http://"), None);
        assert_eq!(path("", "healthz"), "/healthz");
        assert_eq!(path("base", "v2/x"), "/base/v2/x");
    }
}
