// SPDX-License-Identifier: GPL-2.0
#include <linux/init.h>
#include <linux/module.h>
#include "twofile.h"

static int __init twofile_init(void)
{
	pr_info("extmod-twofile: loaded, answer %d\n", twofile_answer(6, 7));
	return 0;
}

static void __exit twofile_exit(void)
{
	pr_info("extmod-twofile: unloaded\n");
}

module_init(twofile_init);
module_exit(twofile_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("extmod example: two files, one module");
