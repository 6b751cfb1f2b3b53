#!/bin/sh
# As in Debian's official container images: packages never start services on install here;
# whoever deploys onto the host starts them.
exit 101
