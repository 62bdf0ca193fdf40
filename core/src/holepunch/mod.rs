//! Hole-punching techniques beyond plain ICE.
//!
//! - [`icmp`]: ICMP hole punching (the pwnat technique) for a server whose peer cannot
//!   signal to it: packet codecs and the sans-IO machine of both roles.

pub mod icmp;
