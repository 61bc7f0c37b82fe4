/* The build's version, for --version and the logs of every zmesh program. The Makefile may override them
 * (-DZMESH_VERSION=...); the defaults are what a plain `make` gives. */
#pragma once

#ifndef ZMESH_VERSION
#define ZMESH_VERSION "0.1.0"
#endif
#ifndef ZMESH_GIT_REVISION
#define ZMESH_GIT_REVISION "unknown"
#endif
#ifndef ZMESH_BUILD_STATUS
#define ZMESH_BUILD_STATUS "unknown"
#endif
