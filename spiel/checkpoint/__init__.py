"""The SpIEL checkpoint: its format, the position codec, writing, reading and checking, and telling
checkpoint kinds apart."""
