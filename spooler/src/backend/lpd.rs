//! `lpd://host[:port]/queue`: the Line Printer Daemon protocol client (RFC 1179).
//!
//! One connection per job: "receive a printer job" for the queue, then the control file,
//! then one data file per document, each acknowledged by a zero byte from the server.

use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::socket::connect_tcp;
use super::{
    Backend, BackendError, Delivery, OutgoingDocument, OutgoingJob, PrinterHealth, copy_document,
    host_and_port, unavailable,
};
use crate::job::Job;

const DEFAULT_PORT: u16 = 515;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to acknowledge a command or to read a chunk.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// RFC 1179 data file names carry one letter per document: A-Z then a-z.
const DATA_FILE_LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Sends jobs to one queue of an LPD server.
pub struct LpdBackend {
    address: (String, u16),
    queue: String,
    /// Our host name as it appears in the control file and the file names.
    host: String,
}

/// Address and queue of an `lpd://` URI (the part after `lpd://`).
pub fn target_of(rest: &str) -> Result<((String, u16), String), BackendError> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let queue = path.split('?').next().unwrap_or("").trim_matches('/');
    if queue.is_empty()
        || queue
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(BackendError::Config(format!(
            "lpd URI must name a queue: lpd://host[:port]/queue, got lpd://{rest}"
        )));
    }
    Ok((host_and_port(authority, DEFAULT_PORT)?, queue.to_owned()))
}

/// Text for a control file line: no line breaks or control characters, and at most
/// `limit` bytes as RFC 1179 allows for the field.
fn control_field(value: &str, limit: usize) -> String {
    let mut field = String::new();
    for c in value.chars().filter(|c| !c.is_control()) {
        if field.len() + c.len_utf8() > limit {
            break;
        }
        field.push(c);
    }
    field
}

/// This machine's name for the `H` line, restricted to what file names may carry.
fn local_host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(31)
        .collect();
    if name.is_empty() {
        "printfleet".to_owned()
    } else {
        name
    }
}

/// RFC 1179 names the files of one job by a three-digit job number.
fn job_number(job: &Job) -> u32 {
    job.id.unsigned_abs() % 1000
}

/// The name of the `index`th data file of a job, or `None` past the 52 the protocol allows.
fn data_file_name(index: usize, job_number: u32, host: &str) -> Option<String> {
    let letter = *DATA_FILE_LETTERS.get(index)? as char;
    Some(format!("df{letter}{job_number:03}{host}"))
}

/// The control file: who and what, then one `l` (print, keeping control characters, as
/// PDL data needs) line per copy of each data file, and its `N` (source name) line.
fn control_file(
    job: &Job,
    host: &str,
    copies: u32,
    documents: &[(String, Option<String>)],
) -> String {
    let mut control = format!(
        "H{}\nP{}\nJ{}\n",
        control_field(host, 31),
        control_field(&job.owner, 31),
        control_field(&job.name, 99),
    );
    for (data_file, document_name) in documents {
        for _ in 0..copies {
            control.push_str(&format!("l{data_file}\n"));
        }
        let source = document_name.as_deref().unwrap_or(&job.name);
        control.push_str(&format!("N{}\n", control_field(source, 131)));
    }
    control
}

impl LpdBackend {
    pub fn new(address: (String, u16), queue: String) -> LpdBackend {
        LpdBackend {
            address,
            queue,
            host: local_host_name(),
        }
    }
}

/// Send one command or file trailer and require the server's zero-byte acknowledgement.
async fn send_and_expect_ack(
    stream: &mut TcpStream,
    bytes: &[u8],
    what: &str,
) -> Result<(), BackendError> {
    let exchange = async {
        stream.write_all(bytes).await?;
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).await?;
        Ok::<u8, std::io::Error>(ack[0])
    };
    match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
        Err(_) => Err(unavailable(what, "no acknowledgement")),
        Ok(Err(error)) => Err(unavailable(what, error)),
        Ok(Ok(0)) => Ok(()),
        // A negative acknowledgement on the queue means it does not exist or is
        // disabled (a configuration problem); later in the job it is usually a full
        // spool, worth another try.
        Ok(Ok(code)) if what == "selecting the queue" => Err(BackendError::Config(format!(
            "{what}: server refused with code {code}"
        ))),
        Ok(Ok(code)) => Err(unavailable(
            what,
            format!("server refused with code {code}"),
        )),
    }
}

#[async_trait]
impl Backend for LpdBackend {
    async fn probe(&self) -> Result<PrinterHealth, BackendError> {
        connect_tcp(&self.address, CONNECT_TIMEOUT).await?;
        Ok(PrinterHealth::reachable())
    }

    async fn print(
        &self,
        job: OutgoingJob<'_>,
        documents: Vec<OutgoingDocument>,
    ) -> Result<Delivery, BackendError> {
        let number = job_number(job.job);
        let mut named = Vec::with_capacity(documents.len());
        for (index, document) in documents.iter().enumerate() {
            let data_file = data_file_name(index, number, &self.host).ok_or_else(|| {
                BackendError::Refused(format!(
                    "LPD carries at most {} documents per job",
                    DATA_FILE_LETTERS.len()
                ))
            })?;
            named.push((data_file, document.name.clone()));
        }
        let copies = job.ticket.copies.unwrap_or(1).clamp(1, 999) as u32;
        let control = control_file(job.job, &self.host, copies, &named);

        let mut stream = connect_tcp(&self.address, CONNECT_TIMEOUT).await?;
        send_and_expect_ack(
            &mut stream,
            format!("\x02{}\n", self.queue).as_bytes(),
            "selecting the queue",
        )
        .await?;
        let control_name = format!("cfA{number:03}{}", self.host);
        send_and_expect_ack(
            &mut stream,
            format!("\x02{} {control_name}\n", control.len()).as_bytes(),
            "announcing the control file",
        )
        .await?;
        let mut control_bytes = control.into_bytes();
        control_bytes.push(0);
        send_and_expect_ack(&mut stream, &control_bytes, "sending the control file").await?;

        for (mut document, (data_file, _)) in documents.into_iter().zip(named) {
            send_and_expect_ack(
                &mut stream,
                format!("\x03{} {data_file}\n", document.size).as_bytes(),
                "announcing a data file",
            )
            .await?;
            let written = copy_document(&mut document, &mut stream, REPLY_TIMEOUT).await?;
            if written != document.size {
                // The server counts bytes: a short or long file would corrupt the job.
                return Err(unavailable(
                    "sending a data file",
                    format!("document has {written} bytes, {} announced", document.size),
                ));
            }
            send_and_expect_ack(&mut stream, &[0], "finishing a data file").await?;
        }
        stream
            .shutdown()
            .await
            .map_err(|error| unavailable("closing the job", error))?;
        Ok(Delivery::default())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::backend::file::tests::{document, sample_job};

    /// What the receiver saw of one job.
    #[derive(Debug, Default)]
    struct ReceivedJob {
        queue: String,
        control_name: String,
        control: String,
        data: BTreeMap<String, Vec<u8>>,
    }

    /// A small RFC 1179 receiver: takes one "receive a printer job" connection, checks
    /// the framing (announced counts and trailing zero bytes) and acknowledges each step.
    async fn receive_one_job(listener: TcpListener) -> ReceivedJob {
        let (connection, _) = listener.accept().await.unwrap();
        let mut reader = BufReader::new(connection);
        let mut received = ReceivedJob::default();
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line[0], 0x02, "receive a printer job");
        received.queue = String::from_utf8(line[1..line.len() - 1].to_vec()).unwrap();
        reader.get_mut().write_all(&[0]).await.unwrap();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await.unwrap() == 0 {
                return received;
            }
            let command = line[0];
            let operands = String::from_utf8(line[1..line.len() - 1].to_vec()).unwrap();
            let (count, name) = operands.split_once(' ').unwrap();
            let count: usize = count.parse().unwrap();
            reader.get_mut().write_all(&[0]).await.unwrap();
            let mut contents = vec![0u8; count + 1];
            reader.read_exact(&mut contents).await.unwrap();
            assert_eq!(contents.pop(), Some(0), "file ends with a zero byte");
            reader.get_mut().write_all(&[0]).await.unwrap();
            match command {
                0x02 => {
                    received.control_name = name.to_owned();
                    received.control = String::from_utf8(contents).unwrap();
                }
                0x03 => {
                    received.data.insert(name.to_owned(), contents);
                }
                other => panic!("unexpected subcommand {other}"),
            }
        }
    }

    #[test]
    fn target_needs_a_queue() {
        assert_eq!(
            target_of("printserver/raw").unwrap(),
            (("printserver".into(), 515), "raw".into())
        );
        assert_eq!(
            target_of("10.0.0.9:5515/lp1").unwrap(),
            (("10.0.0.9".into(), 5515), "lp1".into())
        );
        assert!(target_of("printserver").is_err());
        assert!(target_of("printserver/").is_err());
    }

    #[test]
    fn control_file_names_user_job_and_each_copy() {
        let mut job = sample_job(1234);
        job.name = "line\nbreak".into();
        let control = control_file(
            &job,
            "spooler",
            2,
            &[
                ("dfA234spooler".into(), Some("a.pdf".into())),
                ("dfB234spooler".into(), None),
            ],
        );
        assert_eq!(
            control,
            "Hspooler\nPalice\nJlinebreak\n\
             ldfA234spooler\nldfA234spooler\nNa.pdf\n\
             ldfB234spooler\nldfB234spooler\nNlinebreak\n"
        );
        assert_eq!(job_number(&job), 234);
        assert_eq!(data_file_name(27, 5, "h").as_deref(), Some("dfb005h"));
        assert_eq!(data_file_name(52, 5, "h"), None);
    }

    #[tokio::test]
    async fn lpd_backend_delivers_control_and_data_files() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = tokio::spawn(receive_one_job(listener));
        let backend = LpdBackend::new(("127.0.0.1".into(), port), "raw".into());
        let job = sample_job(17);
        let pdf: Vec<u8> = (0..100_000u32).map(|n| (n % 256) as u8).collect();
        backend
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![
                    document("application/pdf", &pdf),
                    document("text/plain", b"second\n"),
                ],
            )
            .await
            .unwrap();
        let received = receiver.await.unwrap();
        let host = local_host_name();
        assert_eq!(received.queue, "raw");
        assert_eq!(received.control_name, format!("cfA017{host}"));
        assert_eq!(
            received.control,
            format!(
                "H{host}\nPalice\nJquarterly report\nldfA017{host}\nNreport.pdf\n\
                 ldfB017{host}\nNreport.pdf\n"
            )
        );
        assert_eq!(received.data.len(), 2);
        assert_eq!(received.data[&format!("dfA017{host}")], pdf);
        assert_eq!(received.data[&format!("dfB017{host}")], b"second\n");
    }

    #[tokio::test]
    async fn lpd_backend_reports_a_refused_queue_as_config() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.unwrap();
            let mut command = [0u8; 9];
            connection.read_exact(&mut command).await.unwrap();
            connection.write_all(&[1]).await.unwrap();
            command
        });
        let backend = LpdBackend::new(("127.0.0.1".into(), port), "missing".into());
        let job = sample_job(1);
        let result = backend
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![document("text/plain", b"x")],
            )
            .await;
        assert_eq!(&server.await.unwrap(), b"\x02missing\n");
        assert!(matches!(result, Err(BackendError::Config(_))), "{result:?}");
    }
}
