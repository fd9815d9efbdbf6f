#!/bin/bash
# Installs the Debian packages the project needs.
source "$(dirname "$0")/common.sh"
ensure_packages
