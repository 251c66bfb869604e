/* SPDX-License-Identifier: GPL-2.0 */
/* mhd.h: libmicrohttpd, dlopen()ed when the exporter starts instead of linked into every command.
 *
 * Linked, it brings GnuTLS and eight more libraries into every bgswitch process, whose loading
 * and constructors were most of a flip's start-up. After this header the MHD_* functions the
 * exporter calls name the loaded library's (bgs_mhd's pointers, of the header's own types); they
 * may be called once mhd_load() returned 0.
 */
#ifndef BGS_MHD_H
#define BGS_MHD_H

#include <microhttpd.h>

#define BGS_MHD_SONAME "libmicrohttpd.so.12"

struct bgs_mhd {
	__typeof__(MHD_start_daemon) *start_daemon;
	__typeof__(MHD_stop_daemon) *stop_daemon;
	__typeof__(MHD_create_response_from_buffer) *create_response_from_buffer;
	__typeof__(MHD_add_response_header) *add_response_header;
	__typeof__(MHD_queue_response) *queue_response;
	__typeof__(MHD_destroy_response) *destroy_response;
	__typeof__(MHD_suspend_connection) *suspend_connection;
	__typeof__(MHD_resume_connection) *resume_connection;
};

extern struct bgs_mhd bgs_mhd;

int mhd_load(void);

#define MHD_start_daemon (*bgs_mhd.start_daemon)
#define MHD_stop_daemon (*bgs_mhd.stop_daemon)
#define MHD_create_response_from_buffer (*bgs_mhd.create_response_from_buffer)
#define MHD_add_response_header (*bgs_mhd.add_response_header)
#define MHD_queue_response (*bgs_mhd.queue_response)
#define MHD_destroy_response (*bgs_mhd.destroy_response)
#define MHD_suspend_connection (*bgs_mhd.suspend_connection)
#define MHD_resume_connection (*bgs_mhd.resume_connection)

#endif /* BGS_MHD_H */
