//! A minimal blocking HTTP/1.1 client over `std::net` (`GET`, and `POST` of a JSON body),
//! enough to poll a node's REST endpoints every millisecond and to initialize a cluster
//! without pulling an HTTP client and a runtime into the benchmark loop.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// Status and (de-chunked) body of a response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// `GET http://{addr}{path}` with one connection per request; every I/O step bounded by
/// `timeout`.
pub(crate) fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    request(addr, "GET", path, None, timeout)
}

/// `POST http://{addr}{path}` with a JSON `body`; one connection, every I/O step bounded by
/// `timeout`.
pub(crate) fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> io::Result<Response> {
    let body = serde_json::to_vec(body)?;
    request(addr, "POST", path, Some(&body), timeout)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n"
    )
    .into_bytes();
    if let Some(body) = body {
        request.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(body);
    } else {
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad http response: {what}"),
    )
}

fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| invalid("non-utf8 headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| invalid("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status code"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut body: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size"))?;
        let size_line =
            std::str::from_utf8(&body[..line_end]).map_err(|_| invalid("non-utf8 chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| invalid("bad chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        out.extend_from_slice(chunk);
        body = body
            .get(size + 2..)
            .ok_or_else(|| invalid("truncated chunk"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{\"state\":\"ZOMBIE\"}")
                .expect("plain response");
        assert_eq!(plain.status, 200);
        assert_eq!(plain.body, b"{\"state\":\"ZOMBIE\"}");

        let chunked = parse_response(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=1\r\nefg\r\n0\r\n\r\n",
        )
        .expect("chunked response");
        assert_eq!(chunked.status, 409);
        assert_eq!(chunked.body, b"abcdefg");

        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn get_round_trips_against_a_local_server() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).expect("read request");
                assert!(n > 0, "client closed before sending headers");
                request.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .expect("write response");
            String::from_utf8(request).expect("utf8 request")
        });
        let response = get(addr, "/health", Duration::from_secs(10)).expect("get");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
        let request = server.join().expect("server thread");
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn post_sends_a_json_body_with_its_length() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = listener.local_addr().expect("local addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            // headers, then exactly content-length bytes of body (the client keeps its side open)
            loop {
                let n = stream.read(&mut buf).expect("read request");
                assert!(n > 0, "client closed before sending the body");
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("a content-length header");
                    if body.len() >= length {
                        break;
                    }
                }
            }
            stream
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                .expect("write response");
            String::from_utf8(request).expect("utf8 request")
        });
        let body = serde_json::json!({ "name": "local" });
        let response = post_json(
            addr,
            "/management/v1/cluster/init",
            &body,
            Duration::from_secs(10),
        )
        .expect("post");
        assert_eq!(response.status, 201);
        let request = server.join().expect("server thread");
        assert!(
            request.starts_with("POST /management/v1/cluster/init HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Content-Type: application/json\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\n{\"name\":\"local\"}"),
            "{request}"
        );
    }
}
