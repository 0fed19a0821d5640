//! What a libvirt domain's XML (`virsh dumpxml`) says about the devices a
//! package has to care about: its disks (the storage to make available on
//! the node that runs it), its network interfaces, and the boot files a
//! direct-boot domain needs. Parsed with a real XML parser (roxmltree), so
//! comments, CDATA, either quote style, entities and attribute order are all
//! handled as XML defines them.

use std::path::PathBuf;

/// Largest domain definition accepted (libvirt's are a few KiB).
const MAX_XML: usize = 4 * 1024 * 1024;

/// The parts of a domain definition the VM hooks use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainXml {
    pub name: String,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    /// Direct-boot firmware, kernel and initrd (`<os><loader|kernel|initrd>`).
    pub boot_files: Vec<PathBuf>,
}

/// One `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `disk`, `cdrom`, `floppy` or `lun`.
    pub device: String,
    pub source: DiskSource,
    /// The guest's name for it (`vda`, `hdc`), if any.
    pub target: Option<String>,
    /// `startupPolicy='optional'`: the domain starts without it.
    pub optional: bool,
    pub readonly: bool,
    pub shareable: bool,
}

/// Where a disk's data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// An image file on the host (`type='file'`).
    File(PathBuf),
    /// A host block device (`type='block'`).
    Block(PathBuf),
    /// A host directory exported as a disk (`type='dir'`).
    Dir(PathBuf),
    /// A network protocol (`rbd`, `iscsi`, `nbd`, ...) and the remote name.
    Network { protocol: String, name: String },
    /// A libvirt storage pool volume.
    Volume { pool: String, volume: String },
    /// No medium (an empty CD-ROM drive).
    Empty,
    /// A type this build does not know.
    Other(String),
}

/// One `<interface>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// `bridge`, `network`, `direct`, `user`, ...
    pub kind: String,
    /// The host bridge, libvirt network or host device it is attached to.
    pub source: Option<String>,
    pub mac: Option<String>,
    pub model: Option<String>,
}

/// Why `virsh dumpxml`'s output is not a domain definition we read.
#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    #[error("the domain definition is {len} bytes, over the {MAX_XML} accepted")]
    TooLarge { len: usize },
    #[error("the domain definition is not valid XML: {0}")]
    Xml(#[source] roxmltree::Error),
    #[error("the definition's root element is <{root}>, not <domain>")]
    NotADomain { root: String },
}

impl DomainXml {
    /// Parses `virsh dumpxml` output.
    pub fn parse(xml: &str) -> Result<DomainXml, DomainXmlError> {
        if xml.len() > MAX_XML {
            return Err(DomainXmlError::TooLarge { len: xml.len() });
        }
        let doc = roxmltree::Document::parse(xml).map_err(DomainXmlError::Xml)?;
        let root = doc.root_element();
        if !root.has_tag_name("domain") {
            return Err(DomainXmlError::NotADomain {
                root: root.tag_name().name().into(),
            });
        }
        let mut out = DomainXml {
            name: text(child(root, "name")).unwrap_or_default(),
            ..Default::default()
        };
        if let Some(os) = child(root, "os") {
            for name in ["loader", "kernel", "initrd"] {
                if let Some(t) = text(child(os, name)).filter(|t| !t.is_empty()) {
                    out.boot_files.push(PathBuf::from(t));
                }
            }
        }
        let Some(devices) = child(root, "devices") else {
            return Ok(out);
        };
        for d in devices.children().filter(|c| c.has_tag_name("disk")) {
            let src = child(d, "source");
            let attr = |name: &str| src.and_then(|s| s.attribute(name)).map(str::to_string);
            let path = |name: &str| attr(name).map(PathBuf::from);
            let kind = d.attribute("type").unwrap_or("file");
            let source = match (kind, src) {
                (_, None) => DiskSource::Empty,
                ("file", _) => path("file").map_or(DiskSource::Empty, DiskSource::File),
                ("block", _) => path("dev").map_or(DiskSource::Empty, DiskSource::Block),
                ("dir", _) => path("dir").map_or(DiskSource::Empty, DiskSource::Dir),
                ("network", _) => DiskSource::Network {
                    protocol: attr("protocol").unwrap_or_default(),
                    name: attr("name").unwrap_or_default(),
                },
                ("volume", _) => DiskSource::Volume {
                    pool: attr("pool").unwrap_or_default(),
                    volume: attr("volume").unwrap_or_default(),
                },
                (other, _) => DiskSource::Other(other.to_string()),
            };
            out.disks.push(Disk {
                device: d.attribute("device").unwrap_or("disk").to_string(),
                source,
                target: child(d, "target").and_then(|t| t.attribute("dev")).map(str::to_string),
                optional: attr("startupPolicy").as_deref() == Some("optional"),
                readonly: child(d, "readonly").is_some(),
                shareable: child(d, "shareable").is_some(),
            });
        }
        for i in devices.children().filter(|c| c.has_tag_name("interface")) {
            let src = child(i, "source");
            out.interfaces.push(Interface {
                kind: i.attribute("type").unwrap_or_default().to_string(),
                source: src.and_then(|s| {
                    ["bridge", "network", "dev"]
                        .iter()
                        .find_map(|a| s.attribute(*a))
                        .map(str::to_string)
                }),
                mac: child(i, "mac").and_then(|m| m.attribute("address")).map(str::to_string),
                model: child(i, "model").and_then(|m| m.attribute("type")).map(str::to_string),
            });
        }
        Ok(out)
    }

    /// The local files the domain needs in order to start: the sources of
    /// file- and block-backed disks (except optional ones) and the boot files.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .disks
            .iter()
            .filter(|d| !d.optional)
            .filter_map(|d| match &d.source {
                DiskSource::File(p) | DiskSource::Block(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        files.extend(self.boot_files.iter().cloned());
        files
    }
}

/// The first child element named `name`.
fn child<'a, 'input>(n: roxmltree::Node<'a, 'input>, name: &str) -> Option<roxmltree::Node<'a, 'input>> {
    n.children().find(|c| c.has_tag_name(name))
}

/// An element's text, trimmed.
fn text(n: Option<roxmltree::Node<'_, '_>>) -> Option<String> {
    n.and_then(|n| n.text()).map(|t| t.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu'>
  <name>vm1</name>
  <!-- a comment with a <disk type='file'><source file='/not/a/disk'/></disk> in it -->
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/boot/vmlinuz-guest</kernel>
    <initrd>/srv/guest&apos;s initrd.gz</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk device='disk' type='file'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/vm1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type="block" device="disk">
      <source dev="/dev/vg0/vm1data"/>
      <target dev='vdb' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/optional.iso' startupPolicy='optional'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdd' bus='ide'/>
    </disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/img'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'><source network='default'/></interface>
    <diskette/>
  </devices>
</domain>"#;

    #[test]
    fn finds_disk_sources_and_boot_files() {
        let d = DomainXml::parse(XML).unwrap();
        assert_eq!(d.name, "vm1");
        let files: Vec<_> = d
            .referenced_files()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            [
                "/var/lib/libvirt/images/vm1.qcow2",
                "/dev/vg0/vm1data",
                "/boot/vmlinuz-guest",
                "/srv/guest's initrd.gz",
            ]
        );
        assert_eq!(d.disks.len(), 5);
        assert_eq!(d.disks[1].target.as_deref(), Some("vdb"));
        assert!(d.disks[1].shareable);
        assert!(d.disks[2].optional && d.disks[2].readonly);
        assert_eq!(d.disks[3].source, DiskSource::Empty);
        assert_eq!(
            d.disks[4].source,
            DiskSource::Network {
                protocol: "rbd".into(),
                name: "pool/img".into()
            }
        );
        assert_eq!(
            d.interfaces,
            [
                Interface {
                    kind: "bridge".into(),
                    source: Some("br0".into()),
                    mac: Some("52:54:00:12:34:56".into()),
                    model: Some("virtio".into()),
                },
                Interface {
                    kind: "network".into(),
                    source: Some("default".into()),
                    mac: None,
                    model: None,
                },
            ]
        );
    }

    #[test]
    fn a_domain_without_disks_needs_no_files() {
        let xml = "<domain type='qemu'><name>x</name><os><type>hvm</type></os><devices/></domain>";
        assert!(DomainXml::parse(xml).unwrap().referenced_files().is_empty());
    }

    #[test]
    fn bad_definitions_are_errors_that_say_why() {
        let e = DomainXml::parse("<domain><name>x</name>").unwrap_err().to_string();
        assert!(e.starts_with("the domain definition is not valid XML"), "{e}");
        let e = DomainXml::parse("<network><name>x</name></network>").unwrap_err();
        assert!(
            matches!(&e, DomainXmlError::NotADomain { root } if root == "network"),
            "{e:?}"
        );
        assert!(e.to_string().contains("<network>, not <domain>"), "{e}");
        let big = format!("<domain>{}</domain>", " ".repeat(MAX_XML));
        assert!(matches!(DomainXml::parse(&big), Err(DomainXmlError::TooLarge { .. })));
        assert!(DomainXml::parse(&big).unwrap_err().to_string().contains("over the"));
    }
}
