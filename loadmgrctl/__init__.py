"""loadmgrctl: the Load Manager's control client. Every command is one request to loadmgrd."""
