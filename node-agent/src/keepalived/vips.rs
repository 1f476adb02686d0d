//! Which addresses the kernel has on this host's interfaces, read over rtnetlink (the same
//! source as `ip -j addr`). This is the ground truth of who holds a VIP.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;

/// A netlink route socket of this process's network namespace.
pub struct AddressTable {
    handle: rtnetlink::Handle,
}

impl AddressTable {
    /// Opens the socket and spawns its connection task on the current tokio runtime.
    pub fn open() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(AddressTable { handle })
    }

    /// Every address on every interface, IPv4 and IPv6.
    pub async fn addresses(&self) -> Result<BTreeSet<IpAddr>, rtnetlink::Error> {
        let mut stream = self.handle.address().get().execute();
        let mut out = BTreeSet::new();
        while let Some(message) = stream.try_next().await? {
            for attribute in message.attributes {
                match attribute {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => {
                        out.insert(ip);
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_the_loopback_address() {
        let table = AddressTable::open().unwrap();
        let addresses = table.addresses().await.unwrap();
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }
}
